"""The native CPU kernel (`chaincomp.fmc.native`) against the torch path: byte-identical streams (CBR
and VBR) and bit-identical decodes, and the torch path as the fallback (no compiler,
CHAINCOMP_FMC_NATIVE=0, non-finite input). The torch path is itself pinned to the numpy reference
(test_fmc_reference)."""
from __future__ import annotations

import pytest
import torch

from chaincomp.errors import UserError
from chaincomp.fmc import decode, encode, encode_with_stats, native

BITS = {torch.float16: 16, torch.bfloat16: 16, torch.int16: 16, torch.int8: 8, torch.uint8: 8, torch.float32: 16}
CONFIGS = [
    dict(preset="paper"),
    dict(mode="cbr"),
    dict(mode="cbr", block=(1, 4, 4), index_bits=2, scales=("linear", "log", "rlog")),
    dict(mode="cbr", block=(3, 2, 2), index_bits=4, scales=("linear", "log", "hlog", "rhlog")),
    dict(mode="cbr", block=(2, 4, 8), index_bits=3, scales=("hlog",)),
    dict(mode="cbr", block=(1, 2, 8), index_bits=1),
    dict(mode="cbr", method="single_mode"),
    dict(mode="cbr", method="asc_implicit", block=(1, 8, 8), index_bits=3),
]
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 5, 9, 11), (2, 4, 16, 64), (1, 3, 17, 70),
          (2, 3, 12, 56)]  # 56: rows of 7 blocks of 8 (groups of 8 blocks span block rows)


def make_map(shape, dtype, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(shape[0], shape[1], shape[2] + 2, shape[3] + 2, generator=g), 3,
                                       stride=1) * 3
    if kind == "relu":
        x = torch.relu(x - 0.4)
    elif kind == "blocks":  # constant, all-zero and two-valued regions, -0.0
        x = torch.where(x > 0.5, torch.ones_like(x), torch.where(x < -0.5, -torch.zeros_like(x), x.round()))
    elif kind == "tiny":  # float16 subnormals and their neighbours
        x = x * 3e-6
    elif kind == "wide":
        x = x * torch.exp(2 * torch.randn(x.shape, generator=g))
    if dtype == torch.int16:
        x = (x * 3000).round().clamp(-32768, 32767)
    elif dtype == torch.int8:
        x = (x * 40).round().clamp(-128, 127)
    elif dtype == torch.uint8:
        x = (x.abs() * 60).round().clamp(0, 255)
    elif dtype != torch.bfloat16:
        x = x.clamp(-60000, 60000)
    return x.to(dtype)


def streams(x, monkeypatch, **kw):
    """(torch-path stream, native stream), checking that the native kernel really ran."""
    calls = []
    name = "encode_vbr" if kw.get("mode") == "vbr" else "encode_cbr"
    real = getattr(native, name)
    monkeypatch.setattr(native, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    ref = encode(x, **kw)
    assert not calls
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    got = encode(x, **kw)
    assert calls, "the native kernel did not run"
    return ref, got


def same_tensor(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.is_floating_point:
        view = torch.int32 if a.dtype == torch.float32 else torch.int16
        return torch.equal(a.view(view), b.view(view))
    return torch.equal(a, b)


def decodes(data, monkeypatch):
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    ref = decode(data)
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    return ref, decode(data)


needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"no native kernel here ({native.reason})")


@needs_kernel
@pytest.mark.parametrize("dtype", list(BITS))
def test_native_streams_and_decodes_match_torch_path(dtype, monkeypatch):
    monkeypatch.setattr(native, "MIN_VALUES_PER_THREAD", 256)  # small maps split over threads too
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for i, shape in enumerate(SHAPES):
            for kind in ("smooth", "relu", "blocks", "tiny", "wide"):
                x = make_map(shape, dtype, seed=i, kind=kind)
                bit_widths = (16, 8) if dtype == torch.float32 else (BITS[dtype],)
                for cfg in CONFIGS:
                    for bits in bit_widths:
                        ref, got = streams(x, monkeypatch, bits_in=bits, **cfg)
                        assert ref == got, (dtype, shape, kind, cfg, bits)
                        a, b = decodes(ref, monkeypatch)
                        assert same_tensor(a, b), (dtype, shape, kind, cfg, bits)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("dtype", list(BITS))
def test_native_vbr_streams_match_torch_path(dtype, monkeypatch):
    """VBR: tags (zero / const / low / normal), the low-index exactness check and the sectioned
    layout give the torch path's bytes, and the native decoder its values; every tag occurs
    somewhere in the sweep."""
    monkeypatch.setattr(native, "MIN_VALUES_PER_THREAD", 256)
    decoded = []
    real = native.decode_vbr
    monkeypatch.setattr(native, "decode_vbr", lambda *a: decoded.append(real(*a)) or decoded[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = set()
    try:
        for i, shape in enumerate(SHAPES):
            for kind in ("smooth", "relu", "blocks", "tiny", "wide"):
                x = make_map(shape, dtype, seed=i, kind=kind)
                for cfg in CONFIGS:
                    bits = BITS[dtype] if dtype != torch.float32 else 16
                    vbr = {**cfg, "mode": "vbr"}
                    ref, got = streams(x, monkeypatch, bits_in=bits, **vbr)
                    assert ref == got, (dtype, shape, kind, cfg)
                    a, b = decodes(ref, monkeypatch)
                    assert same_tensor(a, b), (dtype, shape, kind, cfg)
                    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
                    stats = encode_with_stats(x, bits_in=bits, **vbr)[1]
                    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
                    assert stats == encode_with_stats(x, bits_in=bits, **vbr)[1], (dtype, shape, kind, cfg)
                    seen |= {t for t, c in stats["mode_histogram"]["tag"].items() if c}
    finally:
        torch.set_num_threads(threads)
    assert seen == {"zero", "const", "low", "normal"}, seen
    assert decoded and all(decoded), "the native VBR decoder did not run (or declined a valid stream)"


@needs_kernel
def test_native_stats_match(monkeypatch):
    x = make_map((2, 4, 16, 64), torch.float16, seed=5, kind="relu")
    for cfg in (dict(preset="paper"), dict(mode="cbr"), dict(mode="vbr")):
        monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
        d0, s0 = encode_with_stats(x, **cfg)
        monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
        d1, s1 = encode_with_stats(x, **cfg)
        assert d0 == d1 and s0 == s1


@needs_kernel
def test_non_finite_input_still_refused(monkeypatch):
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = make_map((1, 2, 8, 8), dtype, seed=0, kind="smooth")
        x[0, 1, 3, 5] = float("nan")
        with pytest.raises(UserError, match="non-finite"):
            encode(x, preset="paper")
        with pytest.raises(UserError, match="non-finite"):
            encode(x, mode="vbr")
    with pytest.raises(UserError, match="float16 range"):
        encode(torch.full((1, 1, 4, 4), 1e6), mode="cbr")


def test_fallback_without_compiler(monkeypatch):
    """No compiler: the torch path runs and writes the same bytes (pinned by test_fmc_paper's CRCs too)."""
    x = make_map((2, 4, 16, 64), torch.float16, seed=2, kind="relu")
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    expected = {name: encode(x, **cfg) for name, cfg in (("paper", dict(preset="paper")), ("cbr", dict(mode="cbr")),
                                                          ("vbr", dict(mode="vbr")))}
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.reset()
    try:
        assert native.library() is None and "compiler" in native.reason
        assert encode(x, preset="paper") == expected["paper"]
        assert encode(x, mode="cbr") == expected["cbr"]
        assert encode(x, mode="vbr") == expected["vbr"]
        assert same_tensor(decode(expected["paper"]), decodes(expected["paper"], monkeypatch)[0])
        assert same_tensor(decode(expected["vbr"]), decodes(expected["vbr"], monkeypatch)[0])
    finally:
        native.reset()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    monkeypatch.setattr(native, "encode_cbr", lambda *a, **k: pytest.fail("native path used"))
    monkeypatch.setattr(native, "decode_cbr", lambda *a, **k: pytest.fail("native path used"))
    monkeypatch.setattr(native, "encode_vbr", lambda *a, **k: pytest.fail("native path used"))
    monkeypatch.setattr(native, "decode_vbr", lambda *a, **k: pytest.fail("native path used"))
    x = make_map((1, 2, 8, 8), torch.float16, seed=0, kind="relu")
    assert decode(encode(x, preset="paper")).shape == x.shape
    assert decode(encode(x, mode="vbr")).shape == x.shape


def test_kernel_build_is_atomic_and_cached(monkeypatch, tmp_path):
    """The library lands under the cache by source hash via temp file + rename; a failed build
    leaves nothing behind (the compiler is faked: no compile in this test)."""
    import subprocess

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = []

    def fake_run(cmd, **kw):
        runs.append(cmd)
        out = cmd[cmd.index("-o") + 1]
        assert native.Path(out).parent == native.cache_dir() and native.Path(out).name.startswith("tmp")
        native.Path(out).write_bytes(b"library")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(native.subprocess, "run", fake_run)
    path = native._build("cc")
    assert path.parent == tmp_path / "chaincomp" / "kernels" and path.name.startswith("fmc_")
    assert path.read_bytes() == b"library" and [p.name for p in path.parent.iterdir()] == [path.name]
    assert native._build("cc") == path and len(runs) == 1  # cached: no second build
    path.unlink()

    def failing_run(cmd, **kw):
        native.Path(cmd[cmd.index("-o") + 1]).write_bytes(b"half")
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(native.subprocess, "run", failing_run)
    with pytest.raises(subprocess.CalledProcessError):
        native._build("cc")
    assert list(path.parent.iterdir()) == []


@needs_kernel
def test_native_vbr_decoder_declines_bad_streams(monkeypatch):
    """A VBR payload whose sections disagree with the header, or whose tags are not a code word, is
    declined by the kernel; the torch path then raises its error."""
    from chaincomp.fmc import bitstream
    from chaincomp.fmc.codec import check
    from chaincomp.fmc.methods import flag_bits

    x = make_map((2, 4, 16, 64), torch.float16, seed=3, kind="relu")
    head, payload = bitstream.read(encode(x, mode="vbr"))
    out = torch.empty(x.shape, dtype=torch.float16)
    m, block, sids, _ = check(tuple(x.shape), mode="vbr")
    args = (payload, torch.float16, out, head.shape, block, head.index_bits, m, sids, flag_bits(m, len(sids)), 16,
            head.qscale)
    assert native.decode_vbr(*args, head.tag_lengths, head.payload_bits)
    assert same_tensor(out, decode(encode(x, mode="vbr")))
    assert not native.decode_vbr(*args, head.tag_lengths, head.payload_bits - 8)  # sizes disagree
    bad = bitstream.write(bitstream.Header(**{**head.__dict__, "payload_bits": head.payload_bits + 8}),
                          bytes(payload) + b"\0")   # `read` hands the payload back as a view
    with pytest.raises(UserError):
        decode(bad)


def test_every_kernel_source_ships_with_the_package():
    """A wheel (not an editable install) compiles the kernel from the installed sources: every file of
    native.SOURCES must be package data, or the kernel silently falls back to the torch path."""
    import tomllib
    from pathlib import Path

    from chaincomp.fmc import native

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["chaincomp"]
    assert {f"fmc/{s}" for s in native.SOURCES} <= set(data)


def test_kernel_tag_code_is_the_python_huffman_code():
    """`fmc_tag_code` (the VBR encoder's tag code, computed in the kernel) against `tags.code_lengths` and
    `tags.canonical_codes` over every pattern of absent tags, ties and skewed counts."""
    import itertools

    import numpy as np

    from chaincomp.fmc import tags

    lib = native.library()
    if lib is None:
        pytest.skip(native.reason)
    values = [0, 1, 2, 3, 5, 8, 100, 4096]
    seen = set()
    for counts in itertools.product(values, repeat=4):
        if not any(counts):
            continue
        c = np.array(counts, np.int64)
        got_len, got_code = np.zeros(4, np.int64), np.zeros(4, np.int64)
        lib.fmc_tag_code(c.ctypes.data, got_len.ctypes.data, got_code.ctypes.data)
        want = tags.code_lengths(c)
        assert tuple(got_len.tolist()) == want, counts
        used = [t for t in range(4) if counts[t]]
        assert [int(got_code[t]) for t in used] == [int(tags.canonical_codes(want)[t]) for t in used], counts
        seen.add(want)
    assert len(seen) > 10  # lengths 0-3 in many shapes
