"""Least-squares endpoints (`endpoints: fit`): a lower error than min/max endpoints at the same stream size,
block by block; streams that decode on both paths; refused where the endpoints also signal the scale."""
from __future__ import annotations

import pytest
import torch
import yaml

from chaincomp.errors import UserError
from chaincomp.fmc import decode, encode, encode_with_stats
from chaincomp.fmc.blocks import to_blocks


def dense_map(seed=0, shape=(2, 8, 32, 32), kind="tanh"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).cumsum(-1) / 3
    return torch.tanh(x) if kind == "tanh" else torch.relu(x - 0.3)


def block_sse(x, y, block=(1, 8, 8)):
    return ((to_blocks(x.double(), block) - to_blocks(y.double(), block)) ** 2).sum(1)


@pytest.mark.parametrize("kind, factor", [("tanh", 0.9), ("relu", 0.93)])   # ReLU: mode-B blocks, fitted on their bulk
@pytest.mark.parametrize("mode", ["cbr", "vbr"])
def test_fit_never_raises_a_blocks_error_and_lowers_the_total(kind, factor, mode):
    x = dense_map(kind=kind).to(torch.float16)
    rng = encode(x, mode=mode)
    fit = encode(x, mode=mode, endpoints="fit")
    if mode == "cbr":
        assert len(fit) == len(rng)                    # same layout: the same bytes count
    e_rng, e_fit = block_sse(decode(rng), x), block_sse(decode(fit), x)
    assert bool((e_fit <= e_rng).all())               # a block keeps the new coding only where it helps
    assert float(e_fit.sum()) < factor * float(e_rng.sum())   # and on dense maps it helps a lot


def test_fit_keeps_every_blocks_mode_and_scale():
    x = dense_map(seed=4, kind="relu").to(torch.float16)
    _, st_range = encode_with_stats(x, mode="cbr")
    _, st_fit = encode_with_stats(x, mode="cbr", endpoints="fit")
    assert st_fit["mode_histogram"] == st_range["mode_histogram"] and st_range["mode_histogram"]["mode"]["B"] > 0


@pytest.mark.parametrize("kind, mode", [("tanh", "cbr"), ("relu", "cbr"), ("relu", "vbr")])
def test_fit_streams_decode_the_same_on_the_native_and_torch_paths(monkeypatch, kind, mode):
    x = dense_map(seed=1, kind=kind).float()
    data = encode(x, mode=mode, endpoints="fit")
    native_out = decode(data)
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    assert torch.equal(decode(data), native_out)


def test_fit_keeps_exact_blocks_exact_and_stats_consistent():
    x = dense_map(seed=2).to(torch.float16)
    x[:, :, :8, :8] = 0.0                              # zero blocks
    x[:, :, 8:16, :8] = 0.5                            # constant blocks
    data, st = encode_with_stats(x, endpoints="fit")
    y = decode(data)
    assert torch.equal(y[:, :, :16, :8], x[:, :, :16, :8])
    assert st["encoded_bytes"] == len(data) and st["mode_histogram"]["tag"]["zero"] == 2 * 8


def test_fit_on_eight_bit_maps():
    x = dense_map(seed=3)
    y = decode(encode(x, bits_in=8, endpoints="fit", mode="cbr"))
    z = decode(encode(x, bits_in=8, mode="cbr"))
    assert float(((y - x) ** 2).sum()) <= float(((z - x) ** 2).sum())


@pytest.mark.parametrize("kw, match", [
    ({"endpoints": "lsq"}, "endpoints must be one of"),
    ({"endpoints": "fit", "preset": "paper"}, "does not apply to preset paper"),
    ({"endpoints": "fit", "method": "asc_implicit"}, "does not apply"),
])
def test_bad_endpoints_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        encode(dense_map(), **kw)


def test_stage_and_study_configs_take_endpoints_and_keep_old_digests(tmp_path, capsys):
    from chaincomp.cli import main
    from chaincomp.stages.fmc import FmcConfig
    from chaincomp.studies.feature_maps import CodecConfig

    assert FmcConfig().model_dump() == {k: v for k, v in FmcConfig(endpoints="range").model_dump().items()}
    assert "endpoints" not in FmcConfig().model_dump()
    assert FmcConfig(endpoints="fit").codec()["endpoints"] == "fit"
    assert "endpoints" not in FmcConfig().codec()
    c = CodecConfig(endpoints="fit")
    assert c.label() == "1x8x8 k3 fit" and c.kwargs(16, "cbr", "minmax")["endpoints"] == "fit"
    assert "endpoints" not in CodecConfig().model_dump()
    for bad in ({"preset": "paper", "endpoints": "fit"},):
        with pytest.raises(ValueError, match="leave out endpoints"):
            FmcConfig(**bad)
    r = {"name": "t", "data": {"name": "digits", "limit_train": 100, "limit_test": 50},
         "model": {"name": "digits_cnn", "width": 0.5}, "baseline": {"epochs": 1},
         "chain": [{"technique": "fmc", "preset": "paper", "endpoints": "fit"}]}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "endpoints" in err and "\n" not in err
