"""`chaincomp fmc` end to end on a tiny config, and bad input ending as one line with exit status 2."""
import json

import pytest

from chaincomp.cli import main
from chaincomp.fmc import native
from chaincomp.studies.feature_maps import load_fmc_recipe
from conftest import fails_with_one_line

TINY = """
name: tiny
seed: 0
tasks:
  - data: {name: digits, limit_train: 200, limit_test: 60}
    model: {name: digits_cnn, width: 0.25}
    baseline: {epochs: 1, batch_size: 64}
    bits_in: [16, 8]
throughput: {batch: 4, repeats: 1}
"""
FIELDS = ("task", "model", "metric_name", "bits_in", "metric_raw", "metric_cbr", "metric_vbr", "ratio_cbr",
          "ratio_vbr")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmc")
    (d / "tiny.yaml").write_text(TINY)
    rc = main(["fmc", str(d / "tiny.yaml"), "--out", str(d / "out")])
    return rc, d / "out"


def test_fmc_json_fields(run):
    rc, out = run
    assert rc == 0
    r = json.loads((out / "fmc.json").read_text())
    assert [(t["method"], t["bits_in"]) for t in r["tasks"]] == [("asc", 16), ("asc", 8)]
    assert sorted((b["method"], b["bits_in"]) for b in r["baselines"]) == [
        ("minmax", 8), ("minmax", 16), ("single_mode", 8), ("single_mode", 16)]
    for row in r["tasks"] + r["baselines"]:
        for key in FIELDS:
            assert key in row, key
        assert row["task"] == "classification" and row["model"] == "digits_cnn" and row["metric_name"] == "top1"
        assert 0 <= row["metric_cbr"] <= 100 and row["ratio_vbr"] >= row["ratio_cbr"] * 0.99
        assert row["dram_bytes_cbr"] < row["dram_bytes_fp32"]
    by = {(t["method"], t["bits_in"]): t for t in r["tasks"] + r["baselines"]}
    assert by[("asc", 16)]["ratio_cbr"] > 4  # (1, 8, 8) blocks, 3-bit indices: 3.52 bits per 16-bit value
    assert by[("asc", 8)]["ratio_cbr"] > 2
    # equal bitrate: the baselines spend no scale flag, so they may be at most 1/64 bit per value cheaper
    assert by[("minmax", 16)]["bits_per_value_cbr"] <= by[("asc", 16)]["bits_per_value_cbr"] <= \
        by[("minmax", 16)]["bits_per_value_cbr"] + 1 / 64 + 1e-3
    d = r["details"][0]
    assert sum(d["mode_histogram"]["mode"].values()) > 0 and d["throughput"]["encode_mbps_cbr"] > 0
    assert d["throughput"]["path"] == ("native" if native.library() is not None else "torch")


def test_report_and_plot_written(run):
    _, out = run
    md = (out / "fmc.md").read_text()
    assert "fmc_modes.png" in md and "MB/s" in md and "minmax" in md and "single_mode" in md
    assert (out / "fmc_modes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["fmc_default", "fmc_cifar10", "fmc_camvid", "fmc_sr", "fmc_sr_points"])
def test_builtin_recipes_validate(name):
    assert load_fmc_recipe(name).tasks
    assert load_fmc_recipe(None).name == "fmc_default"




@pytest.mark.parametrize("text,words", [
    ("tasks: [{bits_in: [12]}]\n", ["tasks.0.bits_in.0"]),
    ("tasks: [{codec: {index_bits: 9}}]\n", ["tasks.0.codec.index_bits"]),
    ("tasks: [{modle: {}}]\n", ["tasks.0.modle", "unknown key"]),
    ("tasks: []\n", ["tasks"]),
    ("- a list\n", ["mapping"]),
    ("tasks: [{\n", ["not valid YAML"]),
])
def test_bad_recipe_exit_2(tmp_path, capsys, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    fails_with_one_line(capsys, ["fmc", str(p), "--out", str(tmp_path / "o")], *words)


def test_missing_recipe_and_bad_points(tmp_path, capsys):
    fails_with_one_line(capsys, ["fmc", str(tmp_path / "nope.yaml")], "not found", "fmc_default")
    p = tmp_path / "pts.yaml"
    p.write_text("tasks: [{data: {name: digits, limit_train: 50, limit_test: 20}, model: {width: 0.25}, "
                 "baseline: {epochs: 0}, points: [blocks.99]}]\n")
    fails_with_one_line(capsys, ["fmc", str(p), "--out", str(tmp_path / "o")], "blocks.99")
