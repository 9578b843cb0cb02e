"""Fused native CPU kernels for the codec's constant- and variable-bitrate paths (`native.c`,
`native_vbr.h`), with the torch path as the fallback.

Why hand-written: no library implements ASC (block min/max, every (mode, scale) candidate's
squared error, midpoint-threshold indices, the implicit method's endpoint nudge, bit records). The
torch path does this in ~45 passes over the map plus bit packing in numpy, 36-86 MB/s; the kernel
does it in one pass per block, in the same operation order (so the streams are byte-identical).

Why plain C loaded with ctypes, not a torch C++ extension: torch's headers take about a minute to
compile on this 2-core machine, the C file compiles in about a second with the system compiler, and
ctypes releases the GIL during the call; a map's blocks are split over threads inside the one call
(`fmc_encode_par`: persistent workers pinned to the other CPUs, `native_pool.h`), which costs less
than handing parts to a Python executor. The
library is built on first use with `-O3` (plus `-mavx2 -mf16c -mfma` when /proc/cpuinfo lists
them; never -ffast-math, and -ffp-contract=off: the float arithmetic must be torch's) and cached by
a hash of the source and flags under ~/.cache/chaincomp/kernels (temp file + rename, so a
concurrent build never leaves a half-written library). No compiler, a failed build, a non-CPU
tensor, a configuration the kernel does not cover, or CHAINCOMP_FMC_NATIVE=0: the torch path.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..device import cpu_flags
from . import tags as tag_code
from .points import cell_exponent, fractions, midpoints, table

HERE = Path(__file__).parent
SOURCES = ("native.c", "native_body.h", "native_vbr.h", "native_pool.h", "native_fit.h")
STORAGE = {torch.float16: 0, torch.bfloat16: 1, torch.int16: 2, torch.int8: 3, torch.uint8: 4}
MT, MP = 4, 16
MAX_PARTS = 64  # native.c's MAX_PARTS
MIN_VALUES_PER_THREAD = 1 << 16  # smaller maps: one thread (waking a sleeping worker costs ~10-40 us)
_LOCK = threading.Lock()
_STATE: dict = {}
reason = ""  # why the native path is unavailable ("" when it is, or before the first try)


def enabled() -> bool:
    return os.environ.get("CHAINCOMP_FMC_NATIVE", "1") != "0"


def compiler() -> str | None:
    """The C compiler to build with ($CC, else gcc or cc on PATH), or None."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-std=gnu11"]
    have = cpu_flags()
    if {"avx2", "f16c", "fma"} <= have:
        flags += ["-mavx2", "-mf16c", "-mfma"]
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= have:
            # the same 8-lane code with 32 vector registers and mask compares: 15-20% faster encodes on a
            # Xeon (benchmarks/fmc_throughput.md, 2026-12-02); 256-bit vectors keep the core's clock up
            flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=256"]
    # the summation order of torch's sum kernel follows its vector width (`tsum` in native_body.h)
    return flags + [f"-DTV={_vector_bytes()}"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chaincomp" / "kernels"


def _build(cc: str) -> Path:
    flags = _flags()
    h = hashlib.sha256(" ".join([cc] + flags).encode())
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    out = cache_dir() / f"fmc_{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob("tmp*.so"):  # left by a build that was killed; an hour is plenty
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, "-o", tmp, str(HERE / "native.c"), "-lm"], check=True, capture_output=True,
                       timeout=300)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def library():
    """The loaded kernel library, built on first use; None when unavailable (see `reason`)."""
    global reason
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        lib = None
        cc = compiler()
        if cc is None:
            reason = "no C compiler found"
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc)))
                p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
                lib.fmc_encode_par.argtypes = [i32, p, p, p, p, i32, p, p]
                lib.fmc_decode_par.argtypes = [i32, p, i64, p, p, p, i32, p, ctypes.c_double]
                lib.fmc_vbr_encode.argtypes = [i32, p, p, p, p, p, p, i32, p, p, p, p, p, p, p]
                lib.fmc_vbr_encode.restype = i64
                lib.fmc_tag_code.argtypes = [p, p, p]
                for w in "fd":
                    getattr(lib, f"fmc_vbr_decode_{w}").argtypes = [p, i64, p, p, p, p, p, p, p, p, p, ctypes.c_double,
                                                                     i32]
                reason = ""
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                reason = f"native fmc kernel unavailable: {e}"
                lib = None
        _STATE["lib"] = lib
        return lib


def reset() -> None:
    """Forget the loaded library (tests: retry after changing the compiler lookup)."""
    with _LOCK:
        _STATE.clear()


def threads(n_values: int) -> int:
    """Threads for a map: torch's setting, at most one per MIN_VALUES_PER_THREAD values."""
    return max(1, min(torch.get_num_threads(), n_values // MIN_VALUES_PER_THREAD, MAX_PARTS))


@lru_cache(maxsize=1)
def _vector_bytes() -> int:
    """Bytes per vector of torch's CPU kernels: its sum order depends on it (`tsum`)."""
    return 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32


def covers(method, block, k: int, storage: torch.dtype, device, fit: bool = False) -> bool:
    """Whether the kernel codes this configuration (else the torch path does). Its sums follow torch's
    order for rows of fewer than 64 vectors (`tsum`): float64 ones for bfloat16 maps and for `fit`."""
    n = block[0] * block[1] * block[2]
    lanes = _vector_bytes() // (8 if storage == torch.bfloat16 or fit else 4)
    return (enabled() and torch.device(device).type == "cpu" and not method.rounding and storage in STORAGE
            and 1 <= k <= 4 and n < min(64 * lanes, 512))


@lru_cache(maxsize=64)
def _tables(method, sids: tuple[int, ...], k: int) -> tuple[np.ndarray, int, int]:
    """(packed tables for `tabs_t`, e_a, e_b)."""
    p = 1 << k
    t = np.zeros((6 * MT + 2 * MT, MP))  # afrac, amid, bfrac, bmid, bfg, dtab (2 * MT rows)
    fa = [fractions(s, p) for s in sids]
    ea = cell_exponent(fa)
    fb = [fractions(s, p - 1) for s in sids] if p > 2 else []
    eb = cell_exponent(fb) if fb else 0
    for i, f in enumerate(fa):
        t[i, :p] = f
        t[MT + i, :p - 1] = [m * 2.0 ** ea for m in midpoints(f)]
    for i, f in enumerate(fb):
        t[2 * MT + i, :p - 1] = f
        t[3 * MT + i, :p - 2] = [m * 2.0 ** eb for m in midpoints(f)]
        t[4 * MT + i, :p - 1] = [x * float(1 << eb) for x in f]
    dt = table(sids, k, torch.float64).numpy()
    t[5 * MT:5 * MT + dt.shape[0], :p] = dt
    return np.ascontiguousarray(t.reshape(-1)[:5 * MT * MP + 2 * MT * MP]), ea, eb


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _cfg(st: int, shape, block, k, method, n_s: int, fb: int, bits: int, ea: int, eb: int, out_kind: int,
         fit: int = 0):
    """native.c's configuration row (its C_* order); fit: `endpoints: fit` passes, 0 for range endpoints."""
    return np.array([st, *shape, *block, k, int(method.implicit_scale), int(method.mode_b and (1 << k) - 1 >= 2),
                     n_s, fb, bits, ea, eb, out_kind, fit], dtype=np.int64)


def _chunks(nb: int, parts: int) -> np.ndarray:
    """Block ranges per thread, flat [b0, b1, b0, b1, ...]; each starts at a multiple of 8 blocks
    (8 records are whole bytes). The kernel runs them on its own threads (`fmc_encode_par`)."""
    step = max(8, (-(-nb // parts) + 7) // 8 * 8)
    return np.array([(b, min(b + step, nb)) for b in range(0, nb, step)], np.int64).reshape(-1)


@lru_cache(maxsize=128)
def _plan(st: int, shape, block, k: int, method, sids, fb: int, bits: int, nb: int, fit: int, parts: int, vbr: bool):
    """What an encode call needs that depends on the configuration alone, built once: (arrays kept
    alive, addresses of cfg / tables / cfg of the k-1 bit tries / tables of those / ranges, range
    count). Saves ~20 us of array building and address lookups per call."""
    tabs, ea, eb = _tables(method, sids, k)
    cfg = _cfg(st, shape, block, k, method, len(sids), fb, bits, ea, eb, 0, fit)
    tabs1, ea1, eb1 = _tables(method, sids, k - 1) if vbr and k > 1 else (tabs, ea, eb)
    cfg1 = _cfg(st, shape, block, max(k - 1, 1), method, len(sids), fb, bits, ea1, eb1, 0) if vbr else cfg
    ranges = _chunks(nb, parts)
    return ((tabs, cfg, tabs1, cfg1, ranges), _ptr(cfg), _ptr(tabs), _ptr(cfg1), _ptr(tabs1), _ptr(ranges),
            ranges.size // 2)


def encode_cbr(x: torch.Tensor, storage: torch.dtype, st: int, shape, block, k: int, method, sids, fb: int,
               bits: int, nb: int, fit: int = 0):
    """CBR payload of a map (x: contiguous, CPU, its storage form or float32 for st 5); fit: the passes of
    least-squares endpoints (`endpoints.fit_endpoints`, in `native_fit.h`), 0 for min/max.
    Returns (payload bytes, payload bits, counts) or None when the kernel declines (non-finite
    input: the torch path raises the error)."""
    lib = library()
    if lib is None:
        return None
    n = block[0] * block[1] * block[2]
    _, pc, pt, _, _, pr, parts = _plan(st, shape, tuple(block), k, method, sids, fb, bits, nb, fit, threads(nb * n),
                                       False)
    nbits = nb * (2 * bits + fb + n * k)
    cnt_at = ((nbits + 7) // 8 + 8 + 7) // 8 * 8  # the counts (8 per part) after the payload: one array, one address
    out = np.empty(cnt_at + 8 * parts * 8, np.uint8)  # the kernel writes every payload byte and every count
    po = _ptr(out)
    if lib.fmc_encode_par(int(storage == torch.bfloat16), x.data_ptr(), pc, pt, pr, parts, po, po + cnt_at):
        return None
    cnt = out[cnt_at:].view(np.int64).reshape(parts, 8).sum(0).tolist()
    return memoryview(out[:(nbits + 7) // 8]), nbits, cnt  # a view: written out once, in `bitstream.write`


def decode_cbr(payload: bytes, storage: torch.dtype, out: torch.Tensor, shape, block, k: int, method, sids,
               fb: int, bits: int, nb: int, qscale: float) -> bool:
    """Decode a CBR payload into `out` (contiguous CPU, the storage dtype or float32); False when
    the kernel declines (an invalid record: the torch path raises the error)."""
    lib = library()
    if lib is None:
        return False
    tabs, ea, eb = _tables(method, sids, k)
    cfg = _cfg(STORAGE[storage], shape, block, k, method, len(sids), fb, bits, ea, eb,
               int(out.dtype == torch.float32))
    buf = np.frombuffer(payload, np.uint8)
    ranges = _chunks(nb, threads(nb * block[0] * block[1] * block[2]))
    return not lib.fmc_decode_par(int(storage == torch.bfloat16), _ptr(buf), buf.size, _ptr(cfg), _ptr(tabs),
                                  _ptr(ranges), ranges.size // 2, out.data_ptr(), qscale)


def encode_vbr(x: torch.Tensor, storage: torch.dtype, st: int, shape, block, k: int, method, sids, fb: int,
               bits: int, nb: int, fit: int = 0):
    """VBR payload of a map (as `encode_cbr`): (payload bytes, payload bits, counts, tag counts,
    tag code lengths), or None when the kernel declines. One kernel call (`fmc_vbr_encode`): the
    scan (`native_vbr.h`), the tags' Huffman code (as `tags.code_lengths`, tested against it) and the
    layout."""
    lib = library()
    if lib is None:
        return None
    n = block[0] * block[1] * block[2]
    _, pc, pt, pc1, pt1, pr, parts = _plan(st, shape, tuple(block), k, method, sids, fb, bits, nb, fit,
                                           threads(nb * n), True)
    nw = -(-n // (32 // k))
    # scratch, 64-byte aligned pieces: counts ((parts + 1) x 16), tag lengths and codes (4 + 4), tags,
    # meta (8 a block), index words (4 x nw a block)
    at_tags = (parts + 1) * 128 + 64
    at_meta = at_tags + (nb + 63) // 64 * 64
    at_words = at_meta + nb * 8
    scratch = np.empty(at_words + nb * nw * 4 + 64, np.uint8)
    base = _ptr(scratch)
    ps = base + -base % 64
    out = np.empty((nb * (3 + 2 * bits + fb) + nb * n * k + 7) // 8 + 16, np.uint8)  # the kernel writes every byte
    nbits = lib.fmc_vbr_encode(int(storage == torch.bfloat16), x.data_ptr(), pc, pt, pc1, pt1, pr, parts,
                               ps + at_tags, ps + at_meta, ps + at_words, ps, ps + (parts + 1) * 128,
                               ps + (parts + 1) * 128 + 32, _ptr(out))
    if nbits < 0:
        return None
    off = ps - base
    got = scratch[off + parts * 128:off + (parts + 1) * 128 + 32].view(np.int64).tolist()
    lengths = tuple(got[16:20])
    return memoryview(out[:(nbits + 7) // 8]), nbits, got[:8], got[8:12], lengths


def decode_vbr(payload: bytes, storage: torch.dtype, out: torch.Tensor, shape, block, k: int, method, sids,
               fb: int, bits: int, qscale: float, lengths, payload_bits: int) -> bool:
    """Decode a VBR payload into `out` (as `decode_cbr`; the tags are read on one thread, then the
    blocks split over threads). `lengths`: the header's tag code lengths, already checked
    (`tags.check_lengths`).
    False when the kernel declines (an invalid stream: the torch path raises the error)."""
    lib = library()
    if lib is None:
        return False
    st = STORAGE[storage]
    kind = int(out.dtype == torch.float32)
    tabs, ea, eb = _tables(method, sids, k)
    cfg = _cfg(st, shape, block, k, method, len(sids), fb, bits, ea, eb, kind)
    tabs1, ea1, eb1 = _tables(method, sids, k - 1) if k > 1 else (tabs, ea, eb)
    cfg1 = _cfg(st, shape, block, max(k - 1, 1), method, len(sids), fb, bits, ea1, eb1, kind)
    codes = np.ascontiguousarray(tag_code.canonical_codes(lengths), np.int64)
    lens = np.array(lengths, np.int64)
    nb = int(np.prod([-(-a // b) for a, b in zip(shape[1:], block)])) * shape[0]
    scratch_tags = np.empty(2 * nb, np.uint8)
    buf = np.frombuffer(payload, np.uint8)
    fn = lib.fmc_vbr_decode_d if storage == torch.bfloat16 else lib.fmc_vbr_decode_f
    return not fn(_ptr(buf), payload_bits, _ptr(cfg), _ptr(tabs), _ptr(cfg1), _ptr(tabs1), _ptr(codes), _ptr(lens),
                  _ptr(scratch_tags), _ptr(scratch_tags) + nb, out.data_ptr(), qscale,
                  threads(nb * block[0] * block[1] * block[2]))
