"""benchmarks/gpu/predictive_exit_paper.py in --smoke mode: the paper-scale device check runs end to end
at toy size on the CPU and reports the paper's four figures beside ours, both ways."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_reports_the_four_figures_both_ways(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHAINCOMP_QUIET": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/predictive_exit_paper.py"), str(tmp_path), "--smoke",
                        "--models", "vgg19"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "predictive_exit_paper.json").read_text())
    assert res["smoke"] and not res["ran_on_gpu"]
    assert res["paper"] == {"computation_reduction_vs_classic": 96.2, "energy_saving_vs_classic": 72.9,
                            "computation_reduction_vs_early_exit": 12.8, "energy_saving_vs_early_exit": 37.6}
    (vgg,) = res["results"]
    assert vgg["model"] == "vgg19" and vgg["exits"] == 20            # every conv and every pool but the last
    eq = vgg["equal_accuracy"]
    assert eq["target_top1"] == vgg["classic_top1"] - 0.25
    assert set(eq["ways"]) == {"predictive", "predictive_softmax", "confidence", "entropy", "maxlogit"}
    assert "NOT an equal-accuracy" in vgg["up_to"]["label"]
    first = vgg["up_to"]["first_exit"]
    assert first["exit_block"] >= 6 and 0 < first["computation_reduction_vs_classic"] < 100
    md = (tmp_path / "predictive_exit_paper.md").read_text()
    assert "SMOKE" in md and "96.2%" in md and "equal accuracy" in md and "up to (ceiling)" in md
