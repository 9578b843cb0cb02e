"""Quantized weights are exactly representable at the stated bits; calibration methods behave."""
import pytest
import torch
from torch import nn

from chaincomp.qmodules import (QUANT_TYPES, QuantPlan, apply_quant, calibrate, calibrate_scale, quantize_act,
                                weight_levels)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("method", ["maxabs", "mse"])
def test_weights_exactly_representable(bits, method):
    torch.manual_seed(bits)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    apply_quant(m, QuantPlan(weight_bits=bits, act_bits=8, first_last_bits=None, weight_method=method))
    for layer in m.modules():
        if isinstance(layer, QUANT_TYPES):
            w = layer.quant_weight().detach()
            q, s = layer.integer_weight()
            assert torch.allclose(q * s, w, atol=1e-6)
            assert torch.equal(q, q.round())
            L = weight_levels(bits)
            assert q.abs().max() <= L
            if bits == 1:
                assert set(q.unique().tolist()) <= {-1.0, 1.0}
            for row in q.reshape(q.shape[0], -1):  # per output channel: at most 2^bits distinct codes
                assert row.unique().numel() <= 2 ** bits


def test_overrides_and_first_last():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    apply_quant(m, QuantPlan(weight_bits=3, act_bits=5, first_last_bits=8, overrides={"1": {"weight_bits": 2}}))
    assert (m[0].weight_bits, m[0].act_bits) == (8, 8)
    assert (m[1].weight_bits, m[1].act_bits) == (2, 5)
    assert (m[3].weight_bits, m[3].act_bits) == (8, 8)


def test_activation_codes_in_range():
    x = torch.randn(1000)
    s = torch.tensor(calibrate_scale(x, 4, True, "minmax"))
    q = quantize_act(x, s, 4, True) / s
    assert q.min() >= -8 and q.max() <= 7 and torch.equal(q, q.round())


def test_percentile_and_mse_clip_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100_000), torch.tensor([80.0])])
    mm = calibrate_scale(x, 4, True, "minmax")
    pc = calibrate_scale(x, 4, True, "percentile")
    mse = calibrate_scale(x, 4, True, "mse")
    assert pc < mm and mse < mm
    err = lambda s: float(((quantize_act(x, torch.tensor(s), 4, True) - x) ** 2).mean())
    assert err(mse) < err(mm)


def test_calibrate_sets_signedness():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1))
    apply_quant(m, QuantPlan(4, 4, None))
    calibrate(m, [torch.randn(4, 1, 5, 5)], "minmax")
    assert bool(m[0].act_signed) and not bool(m[2].act_signed)
