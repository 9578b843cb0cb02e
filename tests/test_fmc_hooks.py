"""Codec hooks on a tiny nn.Sequential: layer choice, counted bytes, removal, gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chaincomp.errors import UserError
from chaincomp.fmc import attach_codec, default_points


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4), nn.ReLU())


def test_default_points_are_activations():
    assert default_points(tiny()) == ["1", "3", "7"]
    assert default_points(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1))) == ["0", "1"]


def test_hooks_code_outputs_and_count_bytes():
    model, x = tiny().eval(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        handle = attach_codec(model, mode="cbr", index_bits=3, block=(2, 4, 4))
        out = model(x)
        model(x)
    stats = handle.stats()
    assert set(stats) == {"1", "3", "7"}
    for name in ("1", "3"):
        s = stats[name]
        assert s["calls"] == 2 and s["skipped"] == 0
        assert s["raw_bytes"] == 2 * (2 * 8 * 16 * 16 * 2)  # two forwards of float16-declared maps
        assert s["ratio"] == pytest.approx(s["raw_bytes"] / s["encoded_bytes"])
        assert s["snr_db"] > 10
        assert sum(s["mode_histogram"]["tag"].values()) > 0
    assert stats["7"]["skipped"] == 2 and stats["7"]["calls"] == 0  # 2-D output passes through
    assert handle.total()["raw_bytes"] == stats["1"]["raw_bytes"] + stats["3"]["raw_bytes"]
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.2 * float(ref.abs().max()))
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_layer_names_predicate_and_errors():
    model, x = tiny(), torch.randn(1, 3, 8, 8)
    with attach_codec(model, ["0"]) as h:
        model(x)
    assert list(h.stats()) == ["0"] and h.stats()["0"]["calls"] == 1
    with attach_codec(model, lambda name, m: isinstance(m, nn.Conv2d)) as h:
        model(x)
    assert sorted(h.stats()) == ["0", "2"]
    with pytest.raises(UserError, match="no module named"):
        attach_codec(model, ["nope"])
    with pytest.raises(UserError, match="index_bits"):
        attach_codec(model, index_bits=9)


def test_straight_through_keeps_gradients():
    model, x = tiny().train(), torch.randn(2, 3, 8, 8)
    with attach_codec(model, ["1"]) as h:
        model(x).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert h.stats()["1"]["calls"] == 1


def test_reset_clears_counts():
    model = tiny()
    h = attach_codec(model, ["1"])
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
    h.reset()
    assert h.stats()["1"]["calls"] == 0 and h.stats()["1"]["raw_bytes"] == 0
    h.remove()
