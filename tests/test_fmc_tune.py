"""Codec-aware tuning in the fmc study (studies/feature_maps_tune.py), at toy size and seeded: fine-tuning
with the codec in the forward pass lowers the coded task loss, the rate allocation keeps its ratio and
spends bits only where they help, and `chaincomp fmc` reports the default codec and the paper preset
side by side with fine-tuned rows and their uncoded control."""
import json

import pytest
import torch

from chaincomp.cli import main
from conftest import fails_with_one_line

CODEC = {"bits_in": 16, "index_bits": 1, "mode": "cbr", "method": "asc", "scales": ["linear"]}  # harsh: 1-bit indices


@pytest.fixture(scope="module")
def toy():
    from chaincomp.chain import train_baseline
    from chaincomp.data import load_data
    from chaincomp.fmc.maps import resolve_points
    from chaincomp.recipe import BaselineConfig, DataConfig, ModelConfig, Recipe

    data = load_data(DataConfig(name="digits", limit_train=300, limit_test=120), 0)
    base = BaselineConfig(epochs=2, lr=0.05, batch_size=32)
    model = train_baseline(Recipe(name="t", data=DataConfig(name="digits", limit_train=300, limit_test=120),
                                  model=ModelConfig(name="digits_cnn", width=0.25), baseline=base), data, reuse=False)
    points = resolve_points(model, data.sample_input(), "auto", (1, 8, 8))
    return data, model, points, base


def coded_loss(model, data, points, codec) -> float:
    """Cross-entropy on the test split with the maps coded."""
    from chaincomp.fmc.maps import FmcHooks
    from chaincomp.train import outputs_and_targets

    fh = FmcHooks(model, points, codec)
    try:
        outs, ys = outputs_and_targets(model, data.test)
    finally:
        fh.remove()
    return float(torch.nn.functional.cross_entropy(torch.cat([o[-1] for o in outs]), torch.cat(ys)))


def test_codec_aware_finetuning_lowers_the_coded_loss(toy):
    from chaincomp.studies.feature_maps_tune import FinetuneConfig, finetune

    data, model, points, base = toy
    cfg = FinetuneConfig(epochs=3, lr_factor=0.2)
    before = coded_loss(model, data, points, CODEC)
    tuned = finetune(model, points, CODEC, data, cfg, base, seed=0)
    after = coded_loss(tuned, data, points, CODEC)
    assert after < before
    assert not hasattr(tuned, "chaincomp_fmc") and not any(hasattr(m, "chaincomp_fmc") for m in tuned.modules())
    assert coded_loss(model, data, points, CODEC) == before   # the original model is left as it was
    again = finetune(model, points, CODEC, data, cfg, base, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values()))


def test_a_point_may_carry_its_own_index_bits(toy):
    """[c, h, w, k]: that map is coded with k-bit indices, a bigger stream than the codec's own."""
    from chaincomp.fmc.maps import FmcHooks, point_codec
    from chaincomp.train import outputs_and_targets

    data, model, points, _ = toy
    p0 = next(iter(points))
    assert point_codec(points[p0] + [3], CODEC) == (tuple(points[p0]), {**CODEC, "index_bits": 3})
    sizes = []
    for pts in (points, {**points, p0: points[p0] + [3]}):
        fh = FmcHooks(model, pts, CODEC)
        outputs_and_targets(model, data.test)
        sizes.append(fh.stats()[p0]["encoded_bytes"])
        fh.remove()
    assert sizes[1] > sizes[0]


def test_allocation_keeps_the_ratio_and_spends_bits_where_they_help(toy):
    from chaincomp.studies.feature_maps_tune import AllocateConfig, allocate

    data, model, points, _ = toy
    codec = {**CODEC, "index_bits": 2}
    none, log = allocate(model, points, codec, data, AllocateConfig(min_ratio=60.0), 16)
    assert all(b[3] == 2 for b in none.values()) and log["split"] == "val"
    assert log["distortion_after"] == log["distortion_before"]
    some, log = allocate(model, points, codec, data, AllocateConfig(min_ratio=4.0), 16)
    assert log["ratio_after"] >= 4.0 and log["distortion_after"] < log["distortion_before"]
    assert any(b[3] == 3 for b in some.values()) and [b[:3] for b in some.values()] == list(points.values())
    assert {t["point"] for t in log["tried"] if t["kept"]} == {p for p, b in some.items() if b[3] == 3}


TWO = """
name: two
seed: 0
tasks:
  - data: {name: digits, limit_train: 200, limit_test: 60}
    model: {name: digits_cnn, width: 0.25}
    baseline: {epochs: 1, batch_size: 64}
    bits_in: [16]
    codec: [{index_bits: 3, allocate: {min_ratio: 4.0}}, {preset: paper}]
    finetune: {epochs: 1, lr_factor: 0.1}
throughput: {batch: 4, repeats: 1}
"""


def test_results_hold_the_default_codec_and_the_paper_preset(tmp_path):
    (tmp_path / "two.yaml").write_text(TWO)
    assert main(["fmc", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "out")]) == 0
    r = json.loads((tmp_path / "out" / "fmc.json").read_text())
    asc = {(t["codec"], t["finetune_epochs"]): t for t in r["tasks"]}
    assert set(asc) == {("1x8x8 k3 alloc", 0), ("1x8x8 k3 alloc", 1), ("paper", 0), ("paper", 1)}
    assert asc[("paper", 0)]["payload_ratio_cbr"] == 4.0          # 64 bits per 16 values, exactly
    assert asc[("1x8x8 k3 alloc", 0)]["payload_ratio_cbr"] >= 4.0
    for t in r["tasks"]:
        assert set(t["ratio_by_map_vbr"]) == set(r["details"][0]["points_by_codec"][t["codec"]])
    for ft in (asc[("paper", 1)], asc[("1x8x8 k3 alloc", 1)]):
        assert ft["delta_cbr_control"] == round(ft["metric_cbr"] - ft["metric_raw_control"], 4)
        assert ft["metric_raw"] == asc[(ft["codec"], 0)]["metric_raw"]    # the loss is against the given model
    # the baselines code the paper's blocks at the paper's rate (equal bitrate), not the default's 3 bits
    paper_base = [b for b in r["baselines"] if b["codec"] == "paper"]
    assert {b["method"] for b in paper_base} == {"minmax", "single_mode"}
    assert all(abs(b["payload_ratio_cbr"] - 4.0) < 0.01 for b in paper_base)
    md = (tmp_path / "out" / "fmc.md").read_text()
    assert "near-lossless goal" in md and "| paper |" in md and "1x8x8 k3 alloc" in md


def test_allocate_with_a_preset_is_refused(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("tasks: [{codec: {preset: paper, allocate: {min_ratio: 4}}}]\n")
    fails_with_one_line(capsys, ["fmc", str(p), "--out", str(tmp_path / "o")], "allocate")
