"""The fmc codec: round trips, counted sizes, error bounds, mode/scale choice, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaincomp.errors import UserError
from chaincomp.fmc import cbr_bytes, decode, encode, encode_minmax, encode_single_mode, encode_with_stats
from chaincomp.fmc.bitstream import HEADER_BYTES
from chaincomp.fmc.blocks import n_blocks, to_blocks
from chaincomp.fmc.points import SCALE_ID, cell_exponent, cells, fractions, index_lut, max_gap, threshold_index

INT_RANGE = {torch.int16: (-32768, 32767), torch.int8: (-128, 127), torch.uint8: (0, 255)}
BITS = {torch.float16: 16, torch.bfloat16: 16, torch.int16: 16, torch.int8: 8, torch.uint8: 8}


def make(shape, dtype, seed=0, relu=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x = x.cumsum(-1) / 2  # some spatial correlation
    if relu:
        x = torch.relu(x - 0.5)
    if dtype in INT_RANGE:
        lo, hi = INT_RANGE[dtype]
        return (x * (hi - lo) / 16).round().clamp(lo, hi).to(dtype)
    return x.to(dtype)


def block_err_and_range(x, y, block):
    xb = to_blocks(x.double(), block).numpy()
    yb = to_blocks(y.double(), block).numpy()
    return np.abs(xb - yb), xb.max(1) - xb.min(1), np.abs(xb).max(1)


def storage_tol(dtype, absmax):
    """Rounding of a decoded value to the stored dtype: half an ulp (floats) or 0.5 (integers)."""
    if dtype in INT_RANGE:
        return 0.5 + 1e-9
    eps = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    return absmax * eps * 1.01 + 1e-7


# ---------------------------------------------------------------- round trips and accounting
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("mode", ["cbr", "vbr"])
def test_round_trip_shape_dtype(dtype, mode):
    x = make((2, 5, 9, 11), dtype)
    data = encode(x, bits_in=BITS[dtype], mode=mode)
    y = decode(data)
    assert y.dtype == dtype and y.shape == x.shape


@pytest.mark.parametrize("bits_in", [16, 8])
def test_float32_input_is_cast_to_declared_precision(bits_in):
    x = make((1, 3, 8, 8), torch.float32)
    data, stats = encode_with_stats(x, bits_in=bits_in, mode="cbr")
    y = decode(data)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert stats["raw_bytes"] == x.numel() * bits_in // 8
    assert float((y - x).abs().max()) < float(x.abs().max())  # sane, not garbage


def test_ratio_is_counted_from_bytes():
    x = make((2, 8, 16, 16), torch.float16, relu=True)
    for mode in ("cbr", "vbr"):
        data, s = encode_with_stats(x, mode=mode)
        assert s["encoded_bytes"] == len(data)
        assert s["raw_bytes"] == x.numel() * 2
        assert s["ratio"] == pytest.approx(x.numel() * 2 / len(data))
        assert len(data) == HEADER_BYTES + math.ceil(s["payload_bits"] / 8)


@pytest.mark.parametrize("block,k,scales", [((1, 4, 4), 2, ("linear", "log")), ((2, 4, 4), 3, ("linear",)),
                                            ((1, 3, 5), 1, ("linear", "log", "rlog"))])
def test_cbr_size_is_predictable_from_shape(block, k, scales):
    shape = (2, 5, 10, 13)
    x = make(shape, torch.float16)
    data = encode(x, mode="cbr", block=block, index_bits=k, scales=scales)
    flag = math.ceil(math.log2(len(scales))) if len(scales) > 1 else 0
    blocks = 2 * math.ceil(5 / block[0]) * math.ceil(10 / block[1]) * math.ceil(13 / block[2])
    record = 2 * 16 + flag + math.prod(block) * k
    assert len(data) == HEADER_BYTES + math.ceil(blocks * record / 8)
    assert len(data) == cbr_bytes(shape, block=block, index_bits=k, n_scales=len(scales))


def test_paper_bitrate_16bit_4x4_2bit_is_4x_payload():
    x = make((1, 16, 64, 64), torch.float16)
    data = encode(x, mode="cbr", block=(1, 4, 4), index_bits=2, scales=("linear",))
    assert (len(data) - HEADER_BYTES) * 4 == x.numel() * 2  # (2*16 + 16*2) / (16*16) = 1/4


# ---------------------------------------------------------------- error bounds
@pytest.mark.parametrize("dtype", [torch.float16, torch.int16, torch.uint8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_linear_baselines_error_bound(dtype, k):
    x = make((2, 4, 12, 12), dtype, seed=k)
    for enc, bound in ((encode_single_mode, 1.0 / ((1 << k) - 1)), (encode_minmax, 0.5 / ((1 << k) - 1))):
        y = decode(enc(x, bits_in=BITS[dtype], block=(1, 4, 4), index_bits=k, mode="cbr"))
        err, rng, amax = block_err_and_range(x, y, (1, 4, 4))
        assert (err.max(1) <= rng * bound + storage_tol(dtype, amax)).all()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("scales", [("linear", "log"), ("linear", "hlog", "rhlog")])
def test_asc_error_bound_by_largest_gap(k, scales):
    x = make((2, 4, 12, 12), torch.float16, seed=3, relu=True)
    y = decode(encode(x, block=(1, 4, 4), index_bits=k, scales=scales, mode="cbr"))
    gap = max(max_gap(SCALE_ID[s], n) for s in scales for n in ((1 << k), (1 << k) - 1))
    err, rng, amax = block_err_and_range(x, y, (1, 4, 4))
    assert (err.max(1) <= rng * gap / 2 * 1.0001 + storage_tol(torch.float16, amax)).all()


def test_asc_never_worse_than_single_mode():
    for seed, relu in ((0, False), (1, True)):
        x = make((2, 8, 16, 16), torch.int16, seed=seed, relu=relu)
        ya = decode(encode(x, mode="cbr", scales=("linear", "log")))
        ys = decode(encode_single_mode(x, mode="cbr"))  # same default block and index bits
        sse_a = float((ya.double() - x.double()).square().sum())
        sse_s = float((ys.double() - x.double()).square().sum())
        assert sse_a <= sse_s * 1.001 + x.numel() * 0.25


def test_threshold_selection_is_nearest_point():
    t = torch.rand((200, 16), generator=torch.Generator().manual_seed(0))
    for name in ("linear", "log", "hlog", "rlog"):
        f = torch.tensor(fractions(SCALE_ID[name], 8))
        pos = threshold_index(t, tuple(f.tolist())).long()
        nearest = (t[..., None] - f).abs().argmin(-1)
        assert ((t - f[pos]).abs() <= (t - f[nearest]).abs() + 1e-7).all()


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_cell_lookup_equals_threshold_comparisons(k):
    """The one-lookup index (`cells` + `index_lut`) is the comparison count, at and around every
    midpoint included (where t > m flips) and outside [0, 1] (mode B's zero sits below 0)."""
    g = torch.Generator().manual_seed(k)
    for name in ("linear", "log", "hlog", "rlog", "rhlog"):
        frac = fractions(SCALE_ID[name], 1 << k)
        e = cell_exponent([frac])
        mids = torch.tensor([(a + b) / 2 for a, b in zip(frac, frac[1:])])
        edge = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-1.0))])
        t = torch.cat([torch.rand(5000, generator=g) * 1.4 - 0.2, edge, torch.tensor([0.0, 1.0, -0.0, -5e9])])
        assert torch.equal(index_lut((frac,), e, t.device)[cells(t, e).long()], threshold_index(t, frac))


def test_constant_and_zero_blocks_are_exact():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float16)
    x[0, 1] = 2.5
    x[0, 2] = -7.0
    for mode in ("cbr", "vbr"):
        data, s = encode_with_stats(x, mode=mode)
        assert torch.equal(decode(data), x)
    assert s["mode_histogram"]["tag"] == {"zero": 1, "const": 2, "low": 0, "normal": 0}


def test_bfloat16_extremes_do_not_overflow():
    x = torch.tensor([3.0e38, -3.0e38, 1e-30, 0.0] * 4, dtype=torch.bfloat16).view(1, 1, 4, 4)
    y = decode(encode(x, mode="cbr"))
    assert torch.isfinite(y.float()).all()
    assert y[0, 0, 0, 0] == x[0, 0, 0, 0] and y[0, 0, 0, 1] == x[0, 0, 0, 1]  # endpoints exact


# ---------------------------------------------------------------- mode and scale choice
def _crafted():
    """One (1, 4, 4) block per channel, each built to favour one (mode, scale)."""
    ramp = torch.linspace(0, 15, 16)
    outlier = torch.cat([torch.linspace(1, 30, 15), torch.tensor([100.0])])
    relu = torch.cat([torch.zeros(8), torch.linspace(5, 6, 8)])
    relu_outlier = torch.cat([torch.zeros(6), torch.tensor([1, 1.1, 1.2, 1.3, 1.5, 1.6, 1.8, 2.0, 2.5, 10.0])])
    const = torch.full((16,), 3.0)
    return torch.stack([ramp, outlier, relu, relu_outlier, const]).view(1, 5, 4, 4).half()


def test_each_mode_and_scale_is_chosen_on_crafted_blocks():
    x = _crafted()
    data, s = encode_with_stats(x, mode="cbr", block=(1, 4, 4), index_bits=2, scales=("linear", "log"))
    h = s["mode_histogram"]
    assert h["mode"] == {"A": 2, "B": 2, "const": 1}
    assert h["scale"] == {"linear": 2, "log": 2}
    # and per block: decode each channel alone to see its choice
    expect = [("A", "linear"), ("A", "log"), ("B", "linear"), ("B", "log")]
    for c, (mode, scale) in enumerate(expect):
        _, sc = encode_with_stats(x[:, c:c + 1], mode="cbr", block=(1, 4, 4), index_bits=2,
                                  scales=("linear", "log"))
        assert sc["mode_histogram"]["mode"][mode] == 1 and sc["mode_histogram"]["scale"][scale] == 1, c
    y = decode(data)
    assert y[0, 2].flatten()[:8].eq(0).all()  # mode B keeps the zeros exactly


def test_endpoint_order_signals_mode():
    x = _crafted()[:, 2:3]  # the ReLU block: mode B
    data = encode(x, mode="cbr", block=(1, 4, 4), index_bits=2, scales=("linear",))
    payload = np.unpackbits(np.frombuffer(data[HEADER_BYTES:], np.uint8))
    e0 = torch.from_numpy(np.packbits(payload[:16]).view(">u2").astype(np.int16)).view(torch.float16)
    e1 = torch.from_numpy(np.packbits(payload[16:32]).view(">u2").astype(np.int16)).view(torch.float16)
    assert float(e0) == 6.0 and float(e1) == 5.0  # e0 > e1: zero-reserved mode, bulk 5..6


def test_vbr_low_index_blocks_are_exact_and_smaller():
    x = torch.zeros(1, 4, 4, 4, dtype=torch.float16)
    x[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # two distinct values per block
    data, s = encode_with_stats(x, mode="vbr", block=(1, 4, 4), index_bits=2)
    assert s["mode_histogram"]["tag"]["low"] == 4
    assert torch.equal(decode(data), x)
    assert len(data) < len(encode(x, mode="cbr", block=(1, 4, 4), index_bits=2))


# ---------------------------------------------------------------- VBR against CBR
def test_vbr_beats_cbr_on_sparse_maps_and_is_never_less_exact():
    x = make((2, 16, 32, 32), torch.float16, seed=5, relu=True)
    x[:, ::2] = 0  # half the channels dead, as after ReLU in deep layers
    cbr, vbr = encode(x, mode="cbr"), encode(x, mode="vbr")
    assert len(vbr) < 0.8 * len(cbr)
    e_cbr = (decode(cbr).double() - x.double()).abs()
    e_vbr = (decode(vbr).double() - x.double()).abs()
    assert (e_vbr <= e_cbr).all()


# ---------------------------------------------------------------- bad streams and bad input
@pytest.fixture(scope="module")
def stream():
    return encode(make((1, 4, 8, 8), torch.float16, relu=True), mode="vbr")


def test_truncated_stream_raises(stream):
    for cut in (0, 10, HEADER_BYTES - 1, HEADER_BYTES, len(stream) - 1):
        with pytest.raises(UserError, match="truncated|too short"):
            decode(stream[:cut])


def test_trailing_bytes_raise(stream):
    with pytest.raises(UserError, match="trailing"):
        decode(stream + b"\0")


@pytest.mark.parametrize("pos", [5, 9, 20, HEADER_BYTES - 3, HEADER_BYTES, -1])
def test_corrupted_stream_raises(stream, pos):
    bad = bytearray(stream)
    bad[pos] ^= 0x10
    with pytest.raises(UserError):
        decode(bytes(bad))


def test_wrong_magic_and_type(stream):
    with pytest.raises(UserError, match="magic"):
        decode(b"XXXX" + stream[4:])
    with pytest.raises(UserError, match="bytes"):
        decode("not bytes")


@pytest.mark.parametrize("x,kwargs,msg", [
    (torch.tensor([[[[1.0, float("nan")]]]]).half(), {}, "NaN"),
    (torch.tensor([[[[1.0, float("inf")]]]]).half(), {}, "Inf"),
    (torch.zeros(1, 0, 4, 4, dtype=torch.float16), {}, "empty"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.int32), {}, "dtype"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float64), {}, "dtype"),
    (torch.zeros(2, 4, 4, dtype=torch.float16), {}, "N, C, H, W"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"bits_in": 8}, "bits_in"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"bits_in": 12}, "bits_in"),
    (torch.full((1, 1, 4, 4), 1e6), {"bits_in": 16}, "float16 range"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"index_bits": 0}, "index_bits"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"block": (0, 4, 4)}, "block"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"mode": "abr"}, "mode"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"scales": ("cubic",)}, "scales"),
    (torch.zeros(1, 2, 4, 4, dtype=torch.float16), {"method": "jpeg"}, "method"),
    ([[1.0]], {}, "Tensor"),
])
def test_bad_input_raises(x, kwargs, msg):
    with pytest.raises(UserError, match=msg):
        encode(x, **kwargs)


# ---------------------------------------------------------------- properties
DTYPES = [torch.float16, torch.bfloat16, torch.int16, torch.int8, torch.uint8]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES), block=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
       k=st.integers(1, 4), mode=st.sampled_from(["cbr", "vbr"]),
       method=st.sampled_from(["asc", "single_mode", "minmax", "asc_implicit"]), seed=st.integers(0, 1000),
       relu=st.booleans())
def test_property_round_trip_and_size(n, c, h, w, dtype, block, k, mode, method, seed, relu):
    x = make((n, c, h, w), dtype, seed=seed, relu=relu)
    kw = dict(bits_in=BITS[dtype], block=block, index_bits=k, mode=mode, method=method)
    if method == "asc":
        kw["scales"] = ("linear", "log")
    data, s = encode_with_stats(x, **kw)
    y = decode(data)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert s["encoded_bytes"] == len(data) == HEADER_BYTES + math.ceil(s["payload_bits"] / 8)
    assert s["raw_bytes"] == x.numel() * BITS[dtype] // 8
    if mode == "cbr":
        assert len(data) == cbr_bytes(x.shape, bits_in=BITS[dtype], block=block, index_bits=k, method=method,
                                      n_scales=2 if method == "asc" else 1)
    tables = {"asc": ("linear", "log"), "asc_implicit": ("linear", "log", "rlog")}.get(method, ("linear", "uniform"))
    gap = max(max_gap(SCALE_ID[t], m) for t in tables for m in ((1 << k), max((1 << k) - 1, 1)))
    err, rng, amax = block_err_and_range(x, y, block)
    # asc_implicit may move one endpoint by one code step (at most 2 half-ulps, or 1 on integers)
    step = 2 * storage_tol(dtype, amax) + (dtype in INT_RANGE) if method == "asc_implicit" else 0
    assert (err.max(1) <= (rng + step) * gap / 2 * 1.0001 + step + storage_tol(dtype, amax)).all()
    assert s["blocks"] == n_blocks(tuple(x.shape), block)
    h = s["mode_histogram"]
    assert sum(h["tag"].values()) == s["blocks"]
    assert sum(h["mode"].values()) == (s["blocks"] if mode == "cbr" else h["tag"]["low"] + h["tag"]["normal"])


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=0, max_size=200))
def test_property_garbage_never_decodes_silently(data):
    with pytest.raises(UserError):
        decode(data)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_property_any_single_bit_flip_is_detected(seed, pos, bit):
    data = bytearray(encode(make((1, 2, 8, 8), torch.float16, seed=seed % 7, relu=True)))
    data[pos % len(data)] ^= 1 << bit
    with pytest.raises(UserError):
        decode(bytes(data))
