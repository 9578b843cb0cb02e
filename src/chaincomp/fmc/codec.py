"""ASC feature-map codec: `encode(x) -> bytes`, `decode(bytes) -> tensor`.

Why a real bitstream: the compression ratio must be counted from bytes that decode back, never
estimated. ratio = raw bytes / len(encoded bytes), raw bytes = numel * bits_in / 8 (the map as the
accelerator would move it at its declared precision; a float32 map is first cast to float16 for
bits_in=16, or quantised to int8 with one per-tensor scale for bits_in=8).

Payload (after the header of `bitstream`):
- CBR: every block is one record [e0 | e1 | scale flag | n indices of k bits]; a map's size is
  known from its shape alone (`cbr_bytes`), and record i sits at bit i * record_bits. The flag
  has no bits for a single scale, and none for method asc_implicit (preset "paper"), whose
  scale is the parity of the two endpoints: the record is [e0 | e1 | indices], 64 bits per 16
  values at the paper's operating point.
- VBR: the Huffman-coded tag planes (zero / constant / low-index / normal, see `tags`), then the
  normal blocks (all their [e0 | e1 | scale flag] fields, then all their indices), the low-index
  blocks likewise (k-1 bit indices, used only when they reproduce the block exactly), and one
  value per constant block; all-zero blocks cost only their tag.
  Every VBR block decodes at least as exactly as in CBR.

Non-finite input (NaN, +-Inf) is refused with a UserError: the codec is range based and one Inf
would destroy its block; clean the map first. -0.0 may come back as +0.0. Input dtypes and the
float32 cast are described in `dtypes`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass

import numpy as np
import torch

from chaincomp.errors import UserError

from . import bitstream, dtypes, native, tags
from .blocks import from_blocks, n_blocks, to_blocks
from .coder import CONST, MODE_A, MODE_B, Coded, code_blocks, reconstruct, row_min, row_min_max
from .endpoints import ENDPOINTS, ITERATIONS, fit_endpoints
from .methods import METHOD_BY_ID, METHODS, flag_bits, scale_ids as method_scale_ids
from .points import SCALE_ID, SCALES, bits_for_scales
from .scratch import scratch

# Chosen by `benchmarks/fmc_throughput.py --sweep` (see benchmarks/fmc_throughput.md): the highest
# mean SNR over ReLU / sparse ReLU / Gaussian / CNN float16 maps among configs whose counted CBR
# ratio is >= 4: 8x8 single-channel blocks, 3-bit indices, linear + half-octave log scales
# (4.55x CBR at 20.2 dB mean; 4x4 blocks with 2-bit indices give 3.94x at 16.2 dB).
DEFAULT_BLOCK = (1, 8, 8)
DEFAULT_INDEX_BITS = 3
DEFAULT_SCALES = ("linear", "hlog")


@dataclass(frozen=True)
class Preset:
    """A named operating point: the keywords it fixes (see `resolve`)."""

    name: str
    method: str
    index_bits: int
    mode: str  # the preset's default rate; "vbr" may still be asked for
    block_values: int  # values per block; the block shape follows the map (`preset_block`)
    block: tuple[int, int, int]  # preferred shape


# The paper's constant-bitrate operating point (papers.md section 3): 16-value blocks, two 16-bit
# endpoints, 2-bit indices and nothing else, (2*16 + 16*2) / 16 = 4 bits per value: exactly 4x on
# 16-bit maps (payload; the container adds its 54-byte header). Mode from the endpoint order,
# linear/log scale from the endpoint values (`points.implicit_scale`).
PAPER = Preset("paper", method="asc_implicit", index_bits=2, mode="cbr", block_values=16, block=(1, 4, 4))
PRESETS = {p.name: p for p in (PAPER,)}


def preset_block(preset: Preset, shape) -> tuple[int, int, int]:
    """The preset's block for a map: its preferred shape if that tiles (C, H, W) exactly, else the
    first block of the same number of values that does (fewest channels, then the squarest),
    else the preferred shape with edge padding. Exact tiling is what makes the ratio exact."""
    return _preset_block(preset, tuple(shape))


@lru_cache(maxsize=256)
def _preset_block(preset: Preset, shape: tuple) -> tuple[int, int, int]:
    _, c, h, w = shape
    n = preset.block_values
    shapes = [preset.block] + sorted(
        ((bc, bh, n // bc // bh) for bc in range(1, n + 1) if n % bc == 0
         for bh in range(1, n // bc + 1) if (n // bc) % bh == 0),
        key=lambda b: (b[0], abs(math.log2(b[1] / b[2])), -b[1]))
    for b in shapes:
        if c % b[0] == 0 and h % b[1] == 0 and w % b[2] == 0:
            return b
    return preset.block


def resolve(*, preset=None, block=None, index_bits=None, mode=None, scales=None, method=None, endpoints=None) -> dict:
    """Codec keywords with the unset ones (None) filled from the preset, or from the defaults.

    With a preset, `method` and `index_bits` must be unset or equal to the preset's, and `block`
    unset (None: the preset picks one per map, `preset_block`) or of the preset's number of values;
    `scales` are ignored as for every method that fixes its own. Returns a dict of block (None =
    per map), index_bits, mode, scales, method, preset (the Preset or None) and endpoints ("range": the
    block's min and max; "fit": least squares, `endpoints.fit_endpoints`)."""
    endpoints = "range" if endpoints is None else endpoints
    if endpoints not in ENDPOINTS:
        raise UserError(f"fmc endpoints must be one of {list(ENDPOINTS)}, got {endpoints!r}")
    if endpoints == "fit" and (preset is not None or method == "asc_implicit"):
        raise UserError("fmc endpoints: fit does not apply to preset paper / method asc_implicit (their endpoints "
                        "also signal the scale); use endpoints: range there")
    if preset is None:
        return {"block": DEFAULT_BLOCK if block is None else block,
                "index_bits": DEFAULT_INDEX_BITS if index_bits is None else index_bits,
                "mode": "vbr" if mode is None else mode, "scales": DEFAULT_SCALES if scales is None else scales,
                "method": "asc" if method is None else method, "preset": None, "endpoints": endpoints}
    p = PRESETS.get(preset) if isinstance(preset, str) else preset if isinstance(preset, Preset) else None
    if p is None:
        raise UserError(f"fmc preset must be one of {sorted(PRESETS)}, got {preset!r}")
    for key, value, fixed in (("method", method, p.method), ("index_bits", index_bits, p.index_bits)):
        if value is not None and value != fixed:
            raise UserError(f"fmc preset '{p.name}' fixes {key}={fixed!r}; got {key}={value!r} (leave it out)")
    if block is not None:
        block = tuple(block)
        if len(block) != 3 or math.prod(block) != p.block_values:
            raise UserError(f"fmc preset '{p.name}' codes blocks of {p.block_values} values; block {block} "
                            f"has {math.prod(block) if len(block) == 3 else '?'} (leave it out to fit one per map)")
    return {"block": block, "index_bits": p.index_bits, "mode": p.mode if mode is None else mode,
            "scales": DEFAULT_SCALES if scales is None else scales, "method": p.method, "preset": p,
            "endpoints": endpoints}


def check_args(block, index_bits, mode, method, scales) -> tuple:
    """Validate codec keywords (also used by hooks at attach time); returns (method, block, scale ids)."""
    if method not in METHODS:
        raise UserError(f"fmc method must be one of {sorted(METHODS)}, got {method!r}")
    m = METHODS[method]
    if mode not in ("cbr", "vbr"):
        raise UserError(f"fmc mode must be 'cbr' or 'vbr', got {mode!r}")
    if not (isinstance(index_bits, int) and 1 <= index_bits <= 4):
        raise UserError(f"fmc index_bits must be an integer 1..4, got {index_bits!r}")
    block = tuple(block)
    if len(block) != 3 or not all(isinstance(b, int) and 1 <= b <= 64 for b in block) or math.prod(block) > 1024:
        raise UserError(f"fmc block must be 3 ints (channels, height, width) in 1..64 with at most 1024 "
                        f"values, got {block}")
    if m.fixed_scales is None:
        scales = tuple(scales)
        bad = [s for s in scales if s not in SCALE_ID or s == "uniform"]
        if not 1 <= len(scales) <= 4 or bad or len(set(scales)) != len(scales):
            raise UserError(f"fmc scales must be 1-4 distinct names from {SCALES[:-1]}, got {scales}")
    return m, block, method_scale_ids(m, scales)


def check(shape=None, **kwargs) -> tuple:
    """`resolve` then `check_args` (a preset's per-map block from `shape`, or its preferred one)."""
    cfg = resolve(**kwargs)
    block = cfg["block"]
    if block is None:
        block = preset_block(cfg["preset"], shape) if shape is not None else cfg["preset"].block
    m, block, sids = check_args(block, cfg["index_bits"], cfg["mode"], cfg["method"], cfg["scales"])
    return m, block, sids, cfg


def cbr_bytes(shape, *, bits_in: int = 16, block=None, index_bits=None, n_scales: int = len(DEFAULT_SCALES),
              method=None, preset=None) -> int:
    """Exact CBR stream size for a map shape (n_scales = 1 for the baselines; a method or preset
    with an implicit scale spends no flag bits)."""
    m, block, _, cfg = check(tuple(shape), preset=preset, block=block, index_bits=index_bits, mode="cbr",
                             method=method)
    flag = 0 if m.implicit_scale else (bits_for_scales(n_scales) if m.fixed_scales is None else
                                      bits_for_scales(len(m.fixed_scales)))
    record = 2 * bits_in + flag + math.prod(block) * cfg["index_bits"]
    return bitstream.HEADER_BYTES + (n_blocks(tuple(shape), tuple(block)) * record + 7) // 8


def encode(x: torch.Tensor, *, bits_in: int = 16, block=None, index_bits: int | None = None, mode: str | None = None,
           scales=None, method: str | None = None, preset=None, endpoints: str | None = None) -> bytes:
    """Compress an (N, C, H, W) map; see `encode_with_stats` for the arguments."""
    return encode_with_stats(x, bits_in=bits_in, block=block, index_bits=index_bits, mode=mode,
                             scales=scales, method=method, preset=preset, endpoints=endpoints)[0]


def encode_with_stats(x: torch.Tensor, *, bits_in: int = 16, block=None, index_bits: int | None = None,
                      mode: str | None = None, scales=None, method: str | None = None,
                      preset=None, endpoints: str | None = None) -> tuple[bytes, dict]:
    """Compress and report counted sizes and how often each mode / scale / VBR tag was chosen.

    Unset keywords (None) take the defaults below, or the preset's values (`resolve`).
    bits_in: 16 or 8, the precision the map is moved at (and endpoints are stored at).
    block: (channels, height, width) per block (default DEFAULT_BLOCK); index_bits: k, 2^k points
    per block (default DEFAULT_INDEX_BITS).
    mode: "cbr" (every block the same size) or "vbr" (default; tags for zero / constant / low blocks).
    scales: per-block scale choices (1-4 of linear, log, hlog, rlog, rhlog; default DEFAULT_SCALES);
    ignored by methods that fix their own.
    method: "asc" (default), "asc_implicit" (no scale flag, see `methods`), or the baselines
    "single_mode" and "minmax".
    preset: "paper" / PAPER: the paper's 4.00x operating point (`PAPER`).
    endpoints: "range" (default: each block's min and max) or "fit" (least squares, lower error at the same
    bits: `endpoints`; native on the CPU too); the stream's layout is the same.
    Runs on x's device; only the finished bytes come back to the host.
    Stats: raw_bytes, encoded_bytes (= len of the bytes), ratio, payload_ratio (raw bytes / payload
    bytes, i.e. without the header), bits_per_value (header included), payload_bits, header_bytes,
    blocks, block, and mode_histogram = {"mode": A/B/const, "scale": per scale, "tag":
    zero/const/low/normal} (in VBR, mode and scale count the coded blocks only).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        dtypes.prepare(x, bits_in)  # raises the input error
    m, block, sids, cfg = check(tuple(x.shape), preset=preset, block=block, index_bits=index_bits, mode=mode,
                                scales=scales, method=method, endpoints=endpoints)
    index_bits, mode, fit = cfg["index_bits"], cfg["mode"], cfg["endpoints"] == "fit"
    k, b, fb = index_bits, bits_in, flag_bits(m, len(sids))
    fast = _native(x, bits_in, m, block, k, sids, fb, mode, ITERATIONS if fit else 0)
    if fast is not None:
        payload, nbits, dcode, qscale, got, lengths, tag_counts = fast
        nb = n_blocks(tuple(x.shape), block)
        counts = {"A": got[MODE_A], "B": got[MODE_B], "const": got[CONST], "scale": got[3:3 + len(sids)]}
    else:
        payload, nbits, dcode, qscale, counts, lengths, tag_counts, nb = _torch_encode(x, bits_in, m, block, k, mode,
                                                                                    sids, fb, fit)
    head = bitstream.Header(m.id, dcode, bits_in, int(mode == "vbr"), k, block, sids, lengths,
                            tuple(x.shape), qscale, nbits)
    data = bitstream.write(head, payload)
    raw = x.numel() * bits_in // 8
    hist = {"mode": {"A": counts["A"], "B": counts["B"], "const": counts["const"]},
            "scale": ({"linear": counts["scale"][0], "log": counts["scale"][1]} if m.implicit_scale else
                      {SCALES[s]: counts["scale"][i] for i, s in enumerate(sids)}),
            "tag": {name: int(tag_counts[i]) for i, name in enumerate(tags.NAMES)}}
    stats = {"raw_bytes": raw, "encoded_bytes": len(data), "ratio": raw / len(data),
             "payload_ratio": raw / len(payload) if payload else float("inf"),
             "bits_per_value": 8 * len(data) / x.numel(), "payload_bits": nbits,
             "header_bytes": bitstream.HEADER_BYTES, "blocks": nb, "block": block, "mode_histogram": hist}
    return data, stats


# (x dtype, bits_in) -> native storage code; other inputs go through `dtypes.prepare` first
_NATIVE_INPUT = {(torch.float16, 16): (0, torch.float16), (torch.bfloat16, 16): (1, torch.bfloat16),
                 (torch.float32, 16): (5, torch.float16)}


def _native(x, bits_in, m, block, k, sids, fb, mode, fit: int = 0):
    """(payload, bits, dtype code, qscale, counts, tag code lengths, tag counts) from the native kernel,
    or None (not covered, unavailable, declined: the torch path runs and raises any input error)."""
    if not (native.enabled() and x.device.type == "cpu" and x.numel()):
        return None
    if (x.dtype, bits_in) in _NATIVE_INPUT:
        st, storage = _NATIVE_INPUT[(x.dtype, bits_in)]
        src, dcode, qscale = x.detach().contiguous(), dtypes.CODE[x.dtype], 1.0
    elif not x.dtype.is_floating_point or (x.dtype, bits_in) == (torch.float32, 8):
        src, dcode, qscale = dtypes.prepare(x, bits_in)
        storage = src.dtype
        st = native.STORAGE.get(storage)
    else:
        return None
    if not native.covers(m, block, k, storage, x.device, fit=bool(fit)):
        return None
    nb = n_blocks(tuple(x.shape), block)
    args = (src, storage, st, tuple(x.shape), block, k, m, sids, fb, bits_in, nb, fit)
    if mode == "cbr":
        got = native.encode_cbr(*args)
        return None if got is None else (got[0], got[1], dcode, qscale, got[2], (bitstream.UNUSED,) * 4, [0, 0, 0, nb])
    got = native.encode_vbr(*args)
    return None if got is None else (got[0], got[1], dcode, qscale, got[2], got[4], got[3])


def _torch_encode(x, bits_in, m, block, k, mode, sids, fb, fit: bool = False):
    """The vectorised torch encoder (any device, CBR and VBR); `fit`: least-squares endpoints."""
    storage, dcode, qscale = dtypes.prepare(x, bits_in)
    sdt = storage.dtype
    work = dtypes.work_dtype(sdt)
    v = to_blocks(storage, block, out=scratch("blocks", (n_blocks(tuple(x.shape), block), math.prod(block)), work,
                                               storage.device))
    b = bits_in
    signed = dtypes.has_negative_zero(storage)
    lohi = row_min_max(v, signed)
    coded = code_blocks(v, k, m, sids, lohi, sdt)
    if fit:
        coded = fit_endpoints(v, coded, k, sids, sdt)
    counts = {"A": 0, "B": 0, "const": 0, "scale": [0] * len(sids)}
    out = bitstream.Writer()

    def host(t: torch.Tensor) -> np.ndarray:
        return t.cpu().numpy()

    def meta(c: Coded) -> list[tuple[np.ndarray, int]]:
        _count(counts, c, len(sids))
        return [(host(dtypes.value_bits(c.e0, sdt)), b), (host(dtypes.value_bits(c.e1, sdt)), b), (host(c.scale), fb)]

    if mode == "cbr":  # record i = [e0 | e1 | flag | indices] at bit i * record_bits
        out.records(meta(coded), host(coded.idx), k)
        lengths, tag_counts = (bitstream.UNUSED,) * 4, [0, 0, 0, v.shape[0]]
    else:
        tag, low = _vbr_tags(v, lohi, k, m, sids, sdt)
        tag_counts = torch.bincount(tag, minlength=4).tolist()
        lengths = tags.code_lengths(np.array(tag_counts))
        for plane in tags.encode_tags(tag, lengths):
            out.bits(host(plane))
        for c, kk in ((coded.subset(tag == tags.NORMAL), k), (low, k - 1)):  # all their endpoints, then all indices
            out.meta(meta(c), c.e0.numel())
            out.fields(host(c.idx), kk)
        out.fields(host(dtypes.value_bits(coded.e0[tag == tags.CONST], sdt)), b)
    payload, nbits = out.finish()
    return payload, nbits, dcode, qscale, counts, lengths, tag_counts, v.shape[0]


def _count(counts: dict, c: Coded, n_scales: int) -> None:
    """Add a batch's modes and (non-constant) scales to the histogram, with one host transfer."""
    modes = torch.bincount(c.mode.long(), minlength=3)
    scales = torch.bincount(c.scale[c.mode != CONST].long(), minlength=n_scales)
    got = torch.cat([modes, scales]).tolist()
    counts["const"] += got[CONST]
    counts["A"] += got[MODE_A]
    counts["B"] += got[MODE_B]
    for i in range(n_scales):
        counts["scale"][i] += got[3 + i]


def _distinct_at_most(v: torch.Tensor, d: int) -> torch.Tensor:
    """Per row: at most `d` distinct values (exact). A row whose first d + 1 values are pairwise
    distinct is out at once (cheap, per row); the rest peel their d smallest values one by one."""
    rows, n = v.shape
    out = torch.zeros(rows, dtype=torch.bool, device=v.device)
    if n <= d:
        return ~out
    head = v[:, :d + 1]
    repeat = torch.zeros(rows, dtype=torch.bool, device=v.device)
    for i in range(d + 1):  # (d + 1) d / 2 column comparisons over rows, not values
        for j in range(i + 1, d + 1):
            repeat |= head[:, i] == head[:, j]
    maybe = repeat.nonzero().view(-1)
    if maybe.numel():
        w = torch.index_select(v, 0, maybe, out=scratch("peel", (maybe.numel(), n), v.dtype, v.device))
        top = float(w.abs().max()) + 1
        big = 4 * top  # a peeled value moves above every value still there
        eq = scratch("peeled", w.shape, torch.bool, v.device)
        for _ in range(d):
            w.add_(torch.eq(w, row_min(w)[:, None], out=eq), alpha=big)
        out[maybe] = row_min(w) >= big - top
    return out


def _vbr_tags(v: torch.Tensor, lohi, k: int, m, sids, storage: torch.dtype) -> tuple[torch.Tensor, Coded]:
    """Tag per block: zero / constant / low (exact with k-1 index bits) / normal; and the low blocks' coding."""
    lo, hi = lohi
    const = lo == hi
    tag = torch.full((v.shape[0],), tags.NORMAL, dtype=torch.int64, device=v.device)
    tag[const] = tags.CONST
    tag[const & (lo == 0)] = tags.ZERO
    empty = code_blocks(v[:0], max(k - 1, 1), m, sids, storage=storage)
    if k < 2:
        return tag, empty
    if k == 2:  # exact with 1 bit <=> at most two distinct values
        maybe = row_min(((v == lo[:, None]) | (v == hi[:, None])).view(torch.uint8)).bool() & ~const
    else:
        maybe = _distinct_at_most(v, 1 << (k - 1)) & ~const
    where = maybe.nonzero().view(-1)
    if where.numel() == 0:
        return tag, empty
    sub = code_blocks(v[where], k - 1, m, sids, (lo[where], hi[where]), storage)
    dec = reconstruct(sub.e0, sub.e1, sub.scale, sub.idx, k - 1, m, sids)
    exact = (dtypes.round_for(dec, storage).to(storage).to(v.dtype) == v[where]).all(1)
    tag[where[exact]] = tags.LOW
    return tag, sub.subset(exact)


def decode(data: bytes, device=None) -> torch.Tensor:
    """Rebuild the map in its original dtype and shape (on `device`, default CPU); any
    inconsistency raises UserError."""
    head, payload = bitstream.read(data)
    if head.method not in METHOD_BY_ID or head.dtype not in dtypes.DTYPES or head.rate not in (0, 1):
        raise UserError(f"fmc header has unknown method/dtype/rate ({head.method}, {head.dtype}, {head.rate})")
    m = METHOD_BY_ID[head.method]
    dtype, s16, s8 = dtypes.DTYPES[head.dtype]
    storage = {16: s16, 8: s8}.get(head.bits_in)
    k, b, block = head.index_bits, head.bits_in, head.block
    if storage is None or not 1 <= k <= 4 or min(block) < 1 or min(head.shape) < 1:
        raise UserError(f"fmc header is inconsistent (dtype {dtype}, bits_in {b}, index_bits {k}, "
                        f"block {block}, shape {head.shape})")
    sids = head.scales
    if not sids or any(s >= len(SCALES) for s in sids):
        raise UserError(f"fmc header has invalid scale ids {sids}")
    work = dtypes.work_dtype(storage)
    n, nb, fb = math.prod(block), n_blocks(head.shape, block), flag_bits(m, len(sids))
    reader = bitstream.BitReader(payload, head.payload_bits)
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def rebuild(fields: list[np.ndarray], idx: np.ndarray, kk: int) -> torch.Tensor:
        if m.implicit_scale:  # the scale bit is the parity of the two endpoint patterns
            fields = [fields[0], fields[1], (fields[0] ^ fields[1]) & 1]
        e0, e1, sc = (torch.from_numpy(f).to(dev) for f in fields)
        e0, e1 = dtypes.bits_value(e0, storage, work), dtypes.bits_value(e1, storage, work)
        return reconstruct(e0, e1, sc, torch.from_numpy(idx).to(dev), kk, m, sids)

    if dev.type == "cpu" and native.covers(m, block, k, storage, dev):
        out = torch.empty(head.shape, dtype=torch.float32 if dtype == torch.float32 else storage)
        args = (payload, storage, out, head.shape, block, k, m, sids, fb, b)
        if head.rate == 0 and head.payload_bits == nb * (2 * b + fb + n * k):
            if native.decode_cbr(*args, nb, head.qscale):
                return out  # else an invalid record: the torch path below reports it
        elif head.rate == 1:
            tags.check_lengths(head.tag_lengths)
            if native.decode_vbr(*args, head.qscale, head.tag_lengths, head.payload_bits):
                return out
    if head.rate == 0:
        dec = rebuild(*reader.records(nb, [b, b, fb], n, k), k)
    else:
        tag = tags.decode_tags(reader, nb, head.tag_lengths).to(dev)
        dec = torch.zeros((nb, n), dtype=work, device=dev)
        for t, kk in ((tags.NORMAL, k), (tags.LOW, k - 1)):
            sel = (tag == t).nonzero().view(-1)
            if sel.numel() and kk < 1:
                raise UserError("fmc payload has low-index blocks but index_bits is 1")
            if sel.numel():
                fields = reader.meta(sel.numel(), [b, b, fb])
                dec[sel] = rebuild(fields, reader.fields(sel.numel() * n, kk).reshape(sel.numel(), n), kk)
        const = (tag == tags.CONST).nonzero().view(-1)
        vals = torch.from_numpy(reader.fields(const.numel(), b)).to(dev)
        dec[const] = dtypes.bits_value(vals, storage, work)[:, None]
    reader.finish()
    stored = from_blocks(dtypes.round_for(dec, storage), head.shape, block, storage)
    return dtypes.restore(stored, dtype, head.qscale)
