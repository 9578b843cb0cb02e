"""The GPU checks (benchmarks/gpu/) run end to end at toy size on the CPU (--smoke), so the GPU's time
goes to figures, not to finding a typo. Each writes its summary where it is told."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHAINCOMP_QUIET": "1",
           "CHAINCOMP_CACHE": str(out / "cache")}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / f"{name}.py"), str(out), "--smoke"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["smoke"] is True and s["device"] == "cpu" and (out / "summary.md").is_file()
    return s


@pytest.mark.slow
def test_chain_resnet34_smoke(tmp_path):
    s = run_script("chain_resnet34", tmp_path)
    assert list(s["stages"]) == ["distill", "prune", "quantize", "early_exit"]
    assert s["bitops_reduction"] > 100       # W2A8 on a half-width, half-pruned student: the ledger counts it
    assert s["baseline_cached"] is False
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["device"] == "cpu" and res["final"]["bitops_reduction"] == s["bitops_reduction"]


@pytest.mark.slow
def test_deploy_resnet56_smoke(tmp_path):
    s = run_script("deploy_resnet56", tmp_path)
    assert s["onnx_check"]["passed"]
    assert (tmp_path / "run" / "export" / "model.onnx").is_file()


@pytest.mark.slow
def test_speed_resnet56_smoke(tmp_path):
    s = run_script("speed_resnet56", tmp_path)
    assert s["float_epoch_s"] > 0 and s["qat_w4a4_epoch_s"] > 0 and s["host_syncs_in_one_qat_epoch"] is None


@pytest.mark.slow
def test_fmc_paper_smoke(tmp_path):
    s = run_script("fmc_paper", tmp_path)
    assert s["ran_on_gpu"] is False
    keys = list(s["tasks"])
    for want in ("[paper] ft 0", "[paper] ft 1", "[1x8x8 k3] ft 0", "[1x8x8 k3] ft 1", "val (smoke stand-in"):
        assert any(want in k for k in keys), (want, keys)
    paper = next(v for k, v in s["tasks"].items() if k.startswith("digits/test") and "[paper] ft 1" in k)
    assert paper["vbr_ratio_by_map"] and "loss_cbr_vs_control" in paper and paper["ratio_cbr"] > 3.5
    assert all(t["device"] == "cpu" and t["encode_mbps_cbr"] > 0 for t in s["throughput_on_device"].values())
    assert (tmp_path / "fmc" / "fmc.json").is_file()
