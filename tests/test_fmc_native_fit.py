"""`endpoints: fit` in the native kernel (`native_fit.h`): the same bytes and stats as the torch path's
`fit_endpoints` on every storage dtype, CBR and VBR, any thread count; and it runs natively."""
import pytest
import torch

from chaincomp.fmc import native
from chaincomp.fmc.codec import decode, encode, encode_with_stats
from test_fmc_native import make_map

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernel unavailable: {native.reason}")

DTYPES = [torch.float16, torch.float32, torch.bfloat16, torch.int16, torch.int8, torch.uint8]
CONFIGS = [dict(mode="cbr"), dict(mode="vbr"), dict(mode="cbr", index_bits=2, block=(1, 4, 4)),
           dict(mode="vbr", index_bits=4, scales=("linear",))]


def both(x, monkeypatch, **kw):
    """(torch path, native) encode_with_stats of x."""
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    ref = encode_with_stats(x, **kw)
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    return ref, encode_with_stats(x, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_fit_writes_the_torch_paths_bytes(dtype, monkeypatch):
    monkeypatch.setattr(native, "MIN_VALUES_PER_THREAD", 256)  # two parts per call
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    calls = []
    for name in ("encode_cbr", "encode_vbr"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, real=real: calls.append(a[-1]) or real(*a))
    bits = 8 if dtype in (torch.int8, torch.uint8) else 16
    changed = 0
    try:
        for kind in ("smooth", "relu", "blocks", "tiny", "wide"):
            x = make_map((2, 3, 17, 19), dtype, 1, kind)
            for cfg in CONFIGS:
                (ref, ref_stats), (got, got_stats) = both(x, monkeypatch, bits_in=bits, endpoints="fit", **cfg)
                assert got == ref, (dtype, kind, cfg)
                assert got_stats == ref_stats, (dtype, kind, cfg)
                changed += got != encode(x, bits_in=bits, **cfg)
    finally:
        torch.set_num_threads(before)
    assert calls.count(2) == 5 * len(CONFIGS), "the native kernel did not code every `fit` map (2 passes)"
    assert changed >= 5, "fit changed (almost) no stream: the test would not see a wrong fit"


def test_native_fit_lowers_the_error_on_a_dense_map(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.nn.functional.avg_pool2d(torch.randn(1, 16, 34, 34, generator=g), 3, stride=1) * 3)
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    err = {e: float((decode(encode(x, mode="cbr", endpoints=e)).float() - x).pow(2).sum()) for e in ("range", "fit")}
    assert err["fit"] < 0.9 * err["range"], err


def test_fit_on_blocks_past_the_kernels_sum_order_runs_on_the_torch_path(monkeypatch):
    """`fit` sums in float64: the kernel follows torch's order for fewer than 64 vectors of them (256 values
    with AVX2), so a larger block is left to the torch path, whose bytes it then writes."""
    if native._vector_bytes() != 32:
        pytest.skip("with AVX512 the float64 limit is the kernel's own 512 values")
    calls = []
    real = native.encode_cbr
    monkeypatch.setattr(native, "encode_cbr", lambda *a: calls.append(a[-1]) or real(*a))
    x = make_map((1, 2, 32, 32), torch.float16, 0, "smooth")
    big = (1, 16, 16)
    (ref, _), (got, _) = both(x, monkeypatch, mode="cbr", block=big, endpoints="fit")
    assert got == ref and calls == []
    both(x, monkeypatch, mode="cbr", block=big)   # range endpoints on the same block: native
    assert calls == [0]
