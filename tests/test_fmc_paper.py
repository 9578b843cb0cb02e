"""The paper's operating point (`preset="paper"`): exactly 4x on 16-bit maps, mode from the endpoint
order, linear/log scale from the endpoint parity, and how it fits into the codec API."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from chaincomp.errors import UserError
from chaincomp.fmc import PAPER, attach_codec, cbr_bytes, decode, encode, encode_with_stats, resolve
from chaincomp.fmc.bitstream import HEADER_BYTES
from chaincomp.fmc.codec import preset_block
from chaincomp.fmc.coder import nudge
from chaincomp.fmc.dtypes import value_bits


def relu_map(shape, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(shape[0], shape[1], shape[2] + 2, shape[3] + 2, generator=g), 3,
                                       stride=1) * 3
    return torch.relu(x - 0.3).to(dtype)


def snr(x, y):
    x, y = x.double(), y.double()
    return float(10 * torch.log10(x.square().sum() / (x - y).square().sum()))


@pytest.mark.parametrize("shape", [(1, 16, 64, 64), (2, 3, 4, 4), (1, 16, 7, 7), (2, 8, 2, 6), (1, 32, 1, 1),
                                   (3, 1, 5, 16)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int16])
def test_paper_preset_payload_is_exactly_a_quarter(shape, dtype):
    """C*H*W a multiple of 16: the payload is exactly 1/4 of the 16-bit input, whatever the content."""
    x = relu_map(shape, seed=sum(shape))
    x = (x * 1000).round().to(dtype) if dtype == torch.int16 else x.to(dtype)
    data, s = encode_with_stats(x, preset="paper")
    assert (len(data) - HEADER_BYTES) * 4 == x.numel() * 2
    assert s["payload_ratio"] == 4.0 and s["payload_bits"] == x.numel() * 4
    assert math.prod(s["block"]) == 16
    assert len(data) == cbr_bytes(shape, preset="paper")
    y = decode(data)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_paper_preset_decodes_close_to_the_input():
    x = relu_map((2, 16, 32, 32))
    y = decode(encode(x, preset="paper"))
    assert snr(x, y) > 15  # 2-bit indices: about 16-17 dB on such maps
    # every value within half the largest point gap of its block's range, plus one code step of
    # the nudged endpoint: log points 0, 1/4, 1/2, 1 have a gap of 1/2
    xb = x.double().view(2, 16, 8, 4, 8, 4).permute(0, 1, 2, 4, 3, 5).reshape(-1, 16)
    yb = y.double().view(2, 16, 8, 4, 8, 4).permute(0, 1, 2, 4, 3, 5).reshape(-1, 16)
    rng = xb.amax(1) - xb.amin(1)
    step = xb.abs().amax(1) * 2.0 ** -10 + 2.0 ** -24
    assert ((xb - yb).abs().amax(1) <= rng / 4 + step).all()
    assert torch.equal(y[x == 0], x[x == 0])  # ReLU zeros stay exact (zero-reserved mode B)


def test_implicit_scale_costs_little_against_the_flag_and_beats_linear_only():
    """Same tables with an explicit per-block flag (4.0625 bits/value) and without the log option."""
    x = relu_map((2, 16, 32, 32), seed=3)
    paper = snr(x, decode(encode(x, preset="paper")))
    flagged = snr(x, decode(encode(x, block=(1, 4, 4), index_bits=2, scales=("linear", "log"), mode="cbr")))
    linear = snr(x, decode(encode(x, block=(1, 4, 4), index_bits=2, scales=("linear",), mode="cbr")))
    assert paper > linear + 0.3
    assert paper > flagged - 0.1


def _endpoint_codes(data, n_blocks):
    payload = np.frombuffer(data[HEADER_BYTES:], np.uint8).reshape(n_blocks, 8)  # 64-bit records
    e0 = payload[:, 0].astype(int) << 8 | payload[:, 1]
    e1 = payload[:, 2].astype(int) << 8 | payload[:, 3]
    return e0, e1


def test_order_signals_mode_and_parity_signals_scale():
    ramp = torch.linspace(1, 16, 16)  # uniform: linear
    skew = torch.cat([torch.linspace(1, 30, 15), torch.tensor([100.0])])  # an outlier above the bulk: log
    relu = torch.cat([torch.zeros(8), torch.linspace(5, 6, 8)])  # zeros + a narrow bulk: mode B, linear
    relu_skew = torch.cat([torch.zeros(6), torch.tensor([1, 1.1, 1.2, 1.3, 1.5, 1.6, 1.8, 2.0, 2.5, 10.0])])
    x = torch.stack([ramp, skew, relu, relu_skew]).view(1, 4, 4, 4).half()
    data, s = encode_with_stats(x, preset="paper")
    e0, e1 = _endpoint_codes(data, 4)
    assert list(e0 > e1) == [False, False, True, True]  # mode A, A, B, B
    assert list((e0 ^ e1) & 1) == [0, 1, 0, 1]  # linear, log, linear, log
    assert s["mode_histogram"]["mode"] == {"A": 2, "B": 2, "const": 0}
    assert s["mode_histogram"]["scale"] == {"linear": 2, "log": 2}
    y = decode(data)
    assert y[0, 2].flatten()[:8].eq(0).all()


@pytest.mark.parametrize("dtype,lo,hi", [(torch.float16, -65504.0, 65504.0), (torch.float16, 0.0, 65504.0),
                                         (torch.int8, -128, 127), (torch.uint8, 0, 255), (torch.int16, -5, 7),
                                         (torch.bfloat16, -3.0e38, 1.0), (torch.float16, -0.0, 6e-8)])
def test_nudge_reaches_both_parities_at_the_dtype_limits(dtype, lo, hi):
    storage = torch.float16 if dtype == torch.float16 else dtype
    work = torch.float64 if dtype == torch.bfloat16 else torch.float32
    a = torch.tensor([lo], dtype=dtype).to(work)
    b = torch.tensor([hi], dtype=dtype).to(work)
    for sigma in (0, 1):
        a2, b2 = nudge(a, b, sigma, storage)
        assert int((value_bits(a2, storage) ^ value_bits(b2, storage))[0] & 1) == sigma
        assert a2 < b2 and torch.isfinite(a2).all() and torch.isfinite(b2).all()
        assert torch.equal(a2.to(dtype).to(work), a2) and torch.equal(b2.to(dtype).to(work), b2)  # representable


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8, torch.uint8])
def test_extreme_ranges_round_trip(dtype):
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    vals = torch.tensor([info.min, info.max, 0, 1] * 4, dtype=torch.float32).to(dtype)
    x = torch.stack([vals, vals.flip(0), torch.zeros(16, dtype=dtype), vals.sort().values]).view(1, 4, 4, 4)
    bits = 16 if dtype == torch.float16 else 8
    y = decode(encode(x, preset="paper", bits_in=bits))
    assert y.dtype == dtype and torch.isfinite(y.float()).all()


def test_vbr_with_the_paper_preset_is_smaller_on_sparse_maps_and_as_exact():
    x = relu_map((2, 8, 16, 16))
    x[:, ::2] = 0
    cbr, vbr = encode(x, preset="paper"), encode(x, preset="paper", mode="vbr")
    assert len(vbr) < 0.8 * len(cbr)
    assert ((decode(vbr).double() - x.double()).abs() <= (decode(cbr).double() - x.double()).abs()).all()


def test_preset_block_tiles_the_map():
    assert preset_block(PAPER, (1, 64, 32, 32)) == (1, 4, 4)
    assert preset_block(PAPER, (1, 64, 6, 8)) == (1, 2, 8)
    assert preset_block(PAPER, (1, 64, 7, 7)) == (16, 1, 1)
    assert preset_block(PAPER, (1, 3, 5, 5)) == (1, 4, 4)  # nothing tiles: padded
    x = relu_map((1, 16, 6, 8))
    assert encode_with_stats(x, preset="paper", block=(2, 2, 4))[1]["block"] == (2, 2, 4)


@pytest.mark.parametrize("kwargs,msg", [({"index_bits": 3}, "fixes index_bits"), ({"method": "asc"}, "fixes method"),
                                        ({"block": (1, 8, 8)}, "blocks of 16"), ({"preset": "fast"}, "preset must")])
def test_preset_conflicts_are_refused(kwargs, msg):
    x = relu_map((1, 4, 8, 8))
    with pytest.raises(UserError, match=msg):
        encode(x, **{"preset": "paper", **kwargs})


def test_resolve_fills_the_preset_and_keeps_defaults_without_one():
    cfg = resolve(preset="paper")
    assert (cfg["method"], cfg["index_bits"], cfg["mode"], cfg["block"]) == ("asc_implicit", 2, "cbr", None)
    assert resolve(preset=PAPER, mode="vbr")["mode"] == "vbr"
    assert resolve()["method"] == "asc" and resolve()["block"] == (1, 8, 8)


def test_hooks_take_the_preset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    with attach_codec(model, ["1"], preset="paper") as h:
        model(x)
        s = h.stats()["1"]
    assert s["raw_bytes"] == 2 * 16 * 8 * 8 * 2
    assert s["encoded_bytes"] == HEADER_BYTES + s["raw_bytes"] // 4
    assert s["payload_ratio"] == 4.0 and h.total()["payload_ratio"] == 4.0
    with pytest.raises(UserError, match="fixes index_bits"):
        attach_codec(model, ["1"], preset="paper", index_bits=3)


def test_paper_streams_are_pinned():
    """The preset's format is fixed: these streams (CRC32 of the whole container) must not change
    (a change of the implicit-scale rule or of the nudge would break every stored stream)."""
    x = relu_map((2, 16, 16, 16), seed=7)
    y = (torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * 3).half()
    assert zlib.crc32(encode(x, preset="paper")) == 2244387913
    assert zlib.crc32(encode(y, preset="paper")) == 3175372890
    assert zlib.crc32(encode(x, preset="paper", mode="vbr")) == 1173232833
