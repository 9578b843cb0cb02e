"""`chaincomp exit` end to end on a tiny config, and bad input ending as one line with exit status 2."""
import json

import pytest

from chaincomp.cli import main
from chaincomp.studies.predictive_exit import load_exit_recipe, summary_line
from conftest import fails_with_one_line

TINY = """
name: tiny
seed: 0
data: {name: digits, limit_train: 200, limit_test: 60}
model: {name: digits_vgg, width: 0.25}
baseline: {epochs: 1, batch_size: 64}
exits: {epochs: 1, batch_size: 64}
predictive: {sweep_points: 4, start_block: 1}
energy: {controller: cpufreq}
runtime: {limit: 12, warmup: 1}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit")
    (d / "tiny.yaml").write_text(TINY)
    # a latency limit no operating point meets, and a controller this machine does not have
    rc = main(["exit", str(d / "tiny.yaml"), "--out", str(d / "out"), "--latency-ms", "1e-9"])
    return rc, d / "out"


def test_exit_json_has_every_figure(run):
    rc, out = run
    assert rc == 0
    r = json.loads((out / "exit.json").read_text())
    for way in ("classic", "early_exit", "predictive"):
        for key in ("metric", "macs_per_sample", "energy_j", "latency_ms"):
            assert isinstance(r[way][key], float), (way, key)
    assert set(r["early_exit"]["strategies"]) == {"confidence", "entropy", "maxlogit"}
    assert r["early_exit"]["strategy"] in r["early_exit"]["strategies"]
    assert r["energy_kind"] == "modelled" and r["predictive"]["energy_kind"] == "modelled"
    assert "prediction_accuracy" in r["predictive"]
    for key in ("computation_reduction_vs_classic", "computation_reduction_vs_early_exit",
                "energy_saving_vs_classic", "energy_saving_vs_early_exit", "beta"):
        assert isinstance(r[key], float), key
    # the authors' way by default: an exit after every conv and every max-pool (digits_vgg: 10 layers)
    assert r["style"] == "authors" and r["train"] == "joint" and r["thresholds_T_mode"] == "authors"
    assert r["beta"] > 0 and r["exit_points"] == list(range(9)) and r["n_blocks"] == 10
    assert r["classic"]["heads_per_sample"] == 0.0
    for way in ("predictive", "predictive_softmax"):
        assert r[way]["runtime"]["agreement_with_simulation_pct"] == 100.0
        assert r[way]["engine_overhead_us_per_input"] > 0
    # the headline compares at one accuracy: every way that reaches the target is read there
    eq = r["equal_accuracy"]
    assert eq["target_top1"] == pytest.approx(eq["classic_top1"] - 0.25)
    for way, v in eq["ways"].items():
        assert v is not None, way      # every grid ends with a setting that never fires: classic's top-1
        assert v["macs"] > 0 and v["latency_ms"] > 0 and 0 <= v["weight"] <= 1
    assert r["computation_reduction_vs_classic"] == eq["predictive_vs_classic"]["computation_reduction"]
    assert r["up_to"]["first_exit"]["exit_block"] == 1 and "NOT an equal-accuracy" in r["up_to"]["label"]
    assert set(r["at_chosen_points"]) >= {"computation_reduction_vs_classic", "vs_each_strategy"}
    # the unmeetable limit runs at the top point and says so; the missing cpufreq falls back to a dry run
    assert any("cannot be met" in w for w in r["warnings"])
    assert any("no frequency control" in w for w in r["warnings"])
    assert r["predictive"]["controller"]["dry_run"] is True
    assert set(r["predictive"]["controller"]["mhz_histogram"]) == {"2035.2"}
    assert r["predictive"]["deadline_met_pct"] == 0.0
    ca = r["criteria_auroc"]    # one AUROC per criterion and exit, each a probability or None
    assert set(ca["per_exit"]) == {"confidence", "entropy", "maxlogit"} and ca["exit_blocks"] == r["exit_points"]
    for row in ca["per_exit"].values():
        assert len(row) == 9 and all(v is None or 0.0 <= v <= 1.0 for v in row)


def test_report_and_plots_written(run):
    _, out = run
    md = (out / "exit.md").read_text()
    assert "exit_layers.png" in md and "tradeoff.png" in md and "modelled" in md
    assert "| max\\|logit\\| |" in md and "mean AUROC" in md and "At equal accuracy" in md and "Up to" in md
    line = summary_line(json.loads((out / "exit.json").read_text()))     # what the command prints
    assert line.startswith("At equal top-1") and "max softmax" in line and "Up to (ceiling" in line
    assert (out / "exit_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_from_saved_exit_network_skips_training(run, tmp_path):
    _, out = run
    first = json.loads((out / "exit.json").read_text())
    (tmp_path / "again.yaml").write_text(TINY.replace("model: {name: digits_vgg, width: 0.25}",
                                                      f"model: {{name: digits_vgg, width: 0.25, weights: {out / 'exit_model.safetensors'}}}"))
    assert main(["exit", str(tmp_path / "again.yaml"), "--out", str(tmp_path / "o"), "--platform", "jetson_tx2_gpu",
                 "--beta", str(first["beta"])]) == 0
    again = json.loads((tmp_path / "o" / "exit.json").read_text())
    assert again["platform"] == "jetson_tx2_gpu" and again["thresholds_T"] == first["thresholds_T"]
    for way in ("classic", "predictive"):
        assert again[way]["metric"] == first[way]["metric"]
        assert again[way]["macs_per_sample"] == first[way]["macs_per_sample"]
    assert again["timings_s"]["training"] < first["timings_s"]["training"]


def test_builtin_recipes_validate():
    assert load_exit_recipe(None).model.name == "digits_vgg"
    assert load_exit_recipe("exit_default").predictive.rounds == 8
    assert load_exit_recipe("exit_cifar10_vgg").model.name == "vgg11"
    assert load_exit_recipe("exit_cifar10_resnet").model.name == "resnet20"




@pytest.mark.parametrize("beta", ["0", "-1"])
def test_beta_must_be_positive(tmp_path, capsys, beta):
    fails_with_one_line(capsys, ["exit", "--beta", beta, "--out", str(tmp_path)], "--beta")


def test_recipe_errors_name_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("predictive: {beta: -2}\n")
    fails_with_one_line(capsys, ["exit", str(bad), "--out", str(tmp_path)], "predictive.beta")
    bad.write_text("predictive: {rounds: 8, horizon: 3}\n")
    fails_with_one_line(capsys, ["exit", str(bad), "--out", str(tmp_path)], "predictive.horizon")
    fails_with_one_line(capsys, ["exit", str(tmp_path / "nope.yaml")], "nope.yaml")


def test_bad_platform_profiles(tmp_path, capsys):
    p = tmp_path / "board.yaml"
    p.write_text("name: b\noperating_points:\n  - {freq_mhz: 900, voltage_v: 0.9, power_w: 2}\n"
                 "  - {freq_mhz: 500, voltage_v: 1.0, power_w: 3}\n")
    fails_with_one_line(capsys, ["exit", "--platform", str(p), "--out", str(tmp_path)], "freq_mhz")
    p.write_text("name: b\noperating_points: []\n")
    fails_with_one_line(capsys, ["exit", "--platform", str(p), "--out", str(tmp_path)], "operating_points")
    fails_with_one_line(capsys, ["exit", "--platform", "no_such_board", "--out", str(tmp_path)], "no_such_board")
    p.write_text("name: b\noperating_points:\n  - {freq_mhz: 900, voltage_v: 0.9, power_w: 2}\n")
    fails_with_one_line(capsys, ["exit", "--platform", str(p), "--out", str(tmp_path)], "macs_per_cycle")


def test_start_block_past_the_last_exit(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("predictive: {start_block: 9}\n")       # authors' way: digits_vgg has 10 layers
    fails_with_one_line(capsys, ["exit", str(bad), "--out", str(tmp_path)], "predictive.start_block")
    bad.write_text("exits: {style: project}\npredictive: {start_block: 7}\n")   # project: 8 blocks
    fails_with_one_line(capsys, ["exit", str(bad), "--out", str(tmp_path)], "predictive.start_block")
