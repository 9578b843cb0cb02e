"""ASC feature-map codec: `encode(x) -> bytes`, `decode(bytes) -> tensor`.

Why a real bitstream: the compression ratio must be counted from bytes that decode back, never
estimated. ratio = raw bytes / len(encoded bytes), raw bytes = numel * bits_in / 8 (the map as the
accelerator would move it at its declared precision; a float32 map is first cast to float16 for
bits_in=16, or quantised to int8 with one per-tensor scale for bits_in=8).

Payload (after the header of `bitstream`):
- CBR: every block is one record [e0 | e1 | scale flag | n indices of k bits]; a map's size is
  known from its shape alone (`cbr_bytes`), and record i sits at bit i * record_bits.
- VBR: the Huffman-coded tag planes (zero / constant / low-index / normal, see `tags`), then the
  normal records, the low-index records (k-1 bit indices, used only when they reproduce the block
  exactly), and one value per constant block; all-zero blocks cost only their tag.
  Every VBR block decodes at least as exactly as in CBR.

Non-finite input (NaN, +-Inf) is refused with a UserError: the codec is range based and one Inf
would destroy its block; clean the map first. -0.0 may come back as +0.0. Input dtypes and the
float32 cast are described in `dtypes`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from chaincomp.errors import UserError

from . import bitstream, dtypes, tags
from .blocks import from_blocks, n_blocks, to_blocks
from .coder import CONST, MODE_A, MODE_B, Coded, code_blocks, reconstruct, row_min_max
from .methods import METHOD_BY_ID, METHODS, scale_ids as method_scale_ids
from .points import SCALE_ID, SCALES, bits_for_scales

# Chosen by `benchmarks/fmc_throughput.py --sweep` (see benchmarks/fmc_throughput.md): the highest
# mean SNR over ReLU / sparse ReLU / Gaussian / CNN float16 maps among configs whose counted CBR
# ratio is >= 4: 8x8 single-channel blocks, 3-bit indices, linear + half-octave log scales
# (4.55x CBR at 20.2 dB mean; 4x4 blocks with 2-bit indices give 3.94x at 16.2 dB).
DEFAULT_BLOCK = (1, 8, 8)
DEFAULT_INDEX_BITS = 3
DEFAULT_SCALES = ("linear", "hlog")

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


def cbr_bytes(shape, *, bits_in: int = 16, block=DEFAULT_BLOCK, index_bits: int = DEFAULT_INDEX_BITS,
              n_scales: int = len(DEFAULT_SCALES)) -> int:
    """Exact CBR stream size for a map shape (n_scales = 1 for the baselines)."""
    record = 2 * bits_in + bits_for_scales(n_scales) + math.prod(block) * index_bits
    return bitstream.HEADER_BYTES + (n_blocks(tuple(shape), tuple(block)) * record + 7) // 8


def encode(x: torch.Tensor, *, bits_in: int = 16, block=DEFAULT_BLOCK, index_bits: int = DEFAULT_INDEX_BITS,
           mode: str = "vbr", scales=DEFAULT_SCALES, method: str = "asc") -> bytes:
    """Compress an (N, C, H, W) map; see `encode_with_stats` for the arguments."""
    return encode_with_stats(x, bits_in=bits_in, block=block, index_bits=index_bits, mode=mode,
                             scales=scales, method=method)[0]


def encode_with_stats(x: torch.Tensor, *, bits_in: int = 16, block=DEFAULT_BLOCK,
                      index_bits: int = DEFAULT_INDEX_BITS, mode: str = "vbr", scales=DEFAULT_SCALES,
                      method: str = "asc") -> tuple[bytes, dict]:
    """Compress and report counted sizes and how often each mode / scale / VBR tag was chosen.

    bits_in: 16 or 8, the precision the map is moved at (and endpoints are stored at).
    block: (channels, height, width) per block; index_bits: k, 2^k points per block.
    mode: "cbr" (every block the same size) or "vbr" (tags for zero / constant / low blocks).
    scales: per-block scale choices (1-4 of linear, log, hlog, rlog, rhlog); ignored by baselines.
    method: "asc", or the baselines "single_mode" and "minmax".
    Stats: raw_bytes, encoded_bytes (= len of the bytes), ratio, bits_per_value (header included),
    payload_bits, header_bytes, blocks, and mode_histogram = {"mode": A/B/const, "scale": per
    scale, "tag": zero/const/low/normal} (in VBR, mode and scale count the coded blocks only).
    """
    m, block, sids = check_args(block, index_bits, mode, method, scales)
    storage, dcode, qscale = dtypes.prepare(x, bits_in)
    work = dtypes.work_dtype(storage.dtype)
    v = to_blocks(dtypes.work_array(storage, work), block)
    k, b, fb = index_bits, bits_in, bits_for_scales(len(sids))
    coded = code_blocks(v, k, m, sids)
    hist = {"mode": {"A": 0, "B": 0, "const": 0}, "scale": {SCALES[s]: 0 for s in sids},
            "tag": {name: 0 for name in tags.NAMES}}

    def records(c: Coded, kk: int) -> list[np.ndarray]:
        meta = [bitstream.to_bits(dtypes.value_bits(c.e0, storage.dtype), b),
                bitstream.to_bits(dtypes.value_bits(c.e1, storage.dtype), b),
                bitstream.to_bits(c.scale, fb)]
        idx = bitstream.to_bits(c.idx, kk).reshape(len(c.e0), v.shape[1] * kk)
        _count(hist, c, sids)
        return [np.concatenate(meta, axis=1), idx]

    if mode == "cbr":
        meta, idx = records(coded, k)
        parts, lengths = [np.concatenate([meta, idx], axis=1)], (bitstream.UNUSED,) * 4
        hist["tag"]["normal"] = v.shape[0]
    else:
        tag, low = _vbr_tags(v, k, m, sids, storage.dtype)
        counts = np.bincount(tag, minlength=4)
        lengths = tags.code_lengths(counts)
        parts = tags.encode_tags(tag, lengths)
        parts += records(coded.subset(tag == tags.NORMAL), k)
        parts += records(low, k - 1)
        const = (tag == tags.CONST)
        parts.append(bitstream.to_bits(dtypes.value_bits(coded.e0[const], storage.dtype), b))
        for i, name in enumerate(tags.NAMES):
            hist["tag"][name] = int(counts[i])
    payload, nbits = bitstream.pack(parts)
    head = bitstream.Header(m.id, dcode, bits_in, int(mode == "vbr"), k, block, sids, lengths,
                            tuple(x.shape), qscale, nbits)
    data = bitstream.write(head, payload)
    raw = x.numel() * bits_in // 8
    stats = {"raw_bytes": raw, "encoded_bytes": len(data), "ratio": raw / len(data),
             "bits_per_value": 8 * len(data) / x.numel(), "payload_bits": nbits,
             "header_bytes": bitstream.HEADER_BYTES, "blocks": v.shape[0], "mode_histogram": hist}
    return data, stats


def _count(hist: dict, c: Coded, sids: tuple[int, ...]) -> None:
    mode = c.mode
    hist["mode"]["A"] += int((mode == MODE_A).sum())
    hist["mode"]["B"] += int((mode == MODE_B).sum())
    hist["mode"]["const"] += int((mode == CONST).sum())
    sc = np.bincount(c.scale[mode != CONST], minlength=len(sids))
    for i, s in enumerate(sids):
        hist["scale"][SCALES[s]] += int(sc[i])


def _vbr_tags(v: np.ndarray, k: int, m, sids, storage: torch.dtype) -> tuple[np.ndarray, Coded]:
    """Tag per block: zero / constant / low (exact with k-1 index bits) / normal; and the low blocks' coding."""
    lo, hi = row_min_max(v)
    const = lo == hi
    tag = np.full(v.shape[0], tags.NORMAL, np.int64)
    tag[const] = tags.CONST
    tag[const & (lo == 0)] = tags.ZERO
    empty = code_blocks(v[:0], max(k - 1, 1), m, sids)
    if k < 2:
        return tag, empty
    if k == 2:  # exact with 1 bit <=> at most two distinct values
        maybe = ((v == lo[:, None]) | (v == hi[:, None])).all(1) & ~const
    else:
        s = np.sort(v, axis=1)
        maybe = ((s[:, 1:] != s[:, :-1]).sum(1) + 1 <= (1 << (k - 1))) & ~const
    where = np.flatnonzero(maybe)
    if where.size == 0:
        return tag, empty
    sub = code_blocks(v[where], k - 1, m, sids)
    dec = reconstruct(sub.e0, sub.e1, sub.scale, sub.idx, k - 1, m, sids)
    exact = (dtypes.work_array(dtypes.to_storage(dec, storage), v.dtype) == v[where]).all(1)
    tag[where[exact]] = tags.LOW
    return tag, sub.subset(exact)


def decode(data: bytes) -> torch.Tensor:
    """Rebuild the map in its original dtype and shape; any inconsistency raises UserError."""
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
    n, nb, fb = math.prod(block), n_blocks(head.shape, block), bits_for_scales(len(sids))
    reader = bitstream.BitReader(payload, head.payload_bits)

    def read_records(count: int, kk: int) -> np.ndarray:
        meta = reader.take(count * (2 * b + fb), (count, 2 * b + fb))
        idx = reader.take(count * n * kk, (count, n, kk))
        return _rebuild(meta, idx, kk)

    def _rebuild(meta: np.ndarray, idx: np.ndarray, kk: int) -> np.ndarray:
        e0 = dtypes.bits_value(bitstream.from_bits(meta[:, :b]), storage, work)
        e1 = dtypes.bits_value(bitstream.from_bits(meta[:, b:2 * b]), storage, work)
        sc = bitstream.from_bits(meta[:, 2 * b:])
        return reconstruct(e0, e1, sc, bitstream.from_bits(idx), kk, m, sids)

    if head.rate == 0:
        rec = reader.take(nb * (2 * b + fb + n * k), (nb, 2 * b + fb + n * k))
        dec = _rebuild(rec[:, :2 * b + fb], rec[:, 2 * b + fb:].reshape(nb, n, k), k)
    else:
        tag = tags.decode_tags(reader, nb, head.tag_lengths)
        dec = np.zeros((nb, n), dtype=work)
        for t, kk in ((tags.NORMAL, k), (tags.LOW, k - 1)):
            sel = tag == t
            count = int(sel.sum())
            if count and kk < 1:
                raise UserError("fmc payload has low-index blocks but index_bits is 1")
            if count:
                dec[sel] = read_records(count, kk)
        const = tag == tags.CONST
        n_const = int(const.sum())
        vals = dtypes.bits_value(bitstream.from_bits(reader.take(n_const * b, (n_const, b))), storage, work)
        dec[const] = vals[:, None]
    reader.finish()
    return dtypes.restore(dtypes.to_storage(from_blocks(dec, head.shape, block), storage), dtype, head.qscale)
