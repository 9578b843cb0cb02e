"""Bit packing and the container header of the feature-map codec.

Why a separate module: the block coder decides *what* to store (integers of known widths); this
module only decides *how* they become bytes, so the byte layout can be audited in one place. It is
longer than 400 lines for that reason: every packing path and its inverse stay side by side.

Packing is vectorised with numpy over whole arrays, on the host (the bytes end up there anyway):
k-bit indices become bytes with one integer multiply per machine word (`pack_fields`), 16-bit
endpoints through their big-endian bytes, and records or chunks that do not start on a byte
boundary are moved into place with byte shifts (eight records of r bits span exactly r bytes, so
records are placed by their position in such a group). Nothing is expanded to one byte per bit
except the per-block endpoint fields. There is no Python loop per block or per value; the only
loops run over the handful of fields, the eight positions in a group, and the chunks.

Container layout (little endian), version 1::

    magic "CCFM" | version u8 | method u8 | dtype u8 | bits_in u8 | rate u8 | index_bits u8 |
    block 3*u8 | n_scales u8 | scale ids 4*u8 | tag code lengths 4*u8 | shape 4*u32 |
    qscale f32 | payload_bits u64 | crc32 u32 | payload bytes

The CRC32 covers the header (without the CRC field) and the payload, so any flipped bit in either
is reported instead of decoding to a silently wrong tensor.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

try:   # ISA-L's CRC32 (carry-less multiply) is the same checksum as zlib's, ~4x faster here: at 1 GB/s the
    from isal.isal_zlib import crc32   # CRC of a map's payload was a tenth of its encode time with zlib's
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same value, slower
    from zlib import crc32

import numpy as np

from chaincomp.errors import UserError

MAGIC = b"CCFM"
VERSION = 1
_FMT = "<4sBBBBBB3BB4B4B4IfQ"
_CRC = "<I"
HEADER_BYTES = struct.calcsize(_FMT) + struct.calcsize(_CRC)
UNUSED = 255  # tag code length meaning "symbol never occurs"


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the payload bits."""

    method: int
    dtype: int
    bits_in: int
    rate: int  # 0 = constant bitrate, 1 = variable bitrate
    index_bits: int
    block: tuple[int, int, int]
    scales: tuple[int, ...]
    tag_lengths: tuple[int, int, int, int]
    shape: tuple[int, int, int, int]
    qscale: float
    payload_bits: int


def write(header: Header, payload: bytes) -> bytes:
    """Serialise header + payload (bytes or any byte buffer) and append the CRC32 of both."""
    scales = tuple(header.scales) + (0,) * (4 - len(header.scales))
    head = struct.pack(
        _FMT, MAGIC, VERSION, header.method, header.dtype, header.bits_in, header.rate,
        header.index_bits, *header.block, len(header.scales), *scales, *header.tag_lengths,
        *header.shape, header.qscale, header.payload_bits,
    )
    crc = crc32(payload, crc32(head))
    return head + struct.pack(_CRC, crc) + payload


def read(data: bytes) -> tuple[Header, memoryview]:
    """Parse and verify a container (the payload comes back as a view of `data`, not a copy); every
    failure is a UserError naming the cause."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UserError(f"fmc decode expects bytes, got {type(data).__name__}")
    data = memoryview(data).cast("B")   # no copy of the payload (a map's stream can be megabytes)
    if len(data) < HEADER_BYTES:
        raise UserError(f"fmc stream truncated: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
    if bytes(data[:4]) != MAGIC:
        raise UserError(f"not an fmc stream: magic {bytes(data[:4])!r} != {MAGIC!r}")
    fields = struct.unpack_from(_FMT, data)
    if fields[1] != VERSION:
        raise UserError(f"fmc stream version {fields[1]} is not supported (this build reads version {VERSION})")
    head_len = struct.calcsize(_FMT)
    (crc,) = struct.unpack_from(_CRC, data, head_len)
    payload = data[HEADER_BYTES:]
    payload_bits = fields[-1]
    need = (payload_bits + 7) // 8
    if len(payload) < need:
        raise UserError(f"fmc stream truncated: payload has {len(payload)} bytes, header declares {need}")
    if len(payload) > need:
        raise UserError(f"fmc stream has {len(payload) - need} trailing bytes after the declared payload")
    if crc32(payload, crc32(data[:head_len])) != crc:
        raise UserError("fmc stream corrupted: CRC32 mismatch over header and payload")
    (_, _, method, dtype, bits_in, rate, index_bits, b0, b1, b2, n_scales, s0, s1, s2, s3,
     t0, t1, t2, t3, d0, d1, d2, d3, qscale, _) = fields
    if n_scales > 4:
        raise UserError(f"fmc header declares {n_scales} scales (at most 4)")
    header = Header(method, dtype, bits_in, rate, index_bits, (b0, b1, b2), (s0, s1, s2, s3)[:n_scales],
                    (t0, t1, t2, t3), (d0, d1, d2, d3), qscale, payload_bits)
    return header, payload


# ------------------------------------------------------------------------------ fields <-> bytes
# k-bit indices are packed with one integer multiply per machine word (no per-bit work): the
# values sit one per byte (or per 16-bit lane for k = 3) in a word, and the multiply places copies
# of them so that each value lands at its MSB-first bit position inside one window, with no two
# products overlapping or carrying into it. Unpacking uses the inverse spread. `test_fmc_bits`
# checks every trick against the plain bit-by-bit definition.
_K3 = (1 << 57) + (1 << 38) + (1 << 19) + 1


def _u64(x: int) -> np.uint64:
    return np.uint64(x)


def pack_fields(values: np.ndarray, width: int) -> np.ndarray:
    """(M,) unsigned ints < 2^width (width <= 16) -> ceil(M * width / 8) bytes, MSB first, zero padded."""
    v = np.ascontiguousarray(values).reshape(-1)
    m = v.size
    if width == 0 or m == 0:
        return np.zeros(0, np.uint8)
    nbytes = -(-m * width // 8)
    group = {1: 8, 2: 4, 3: 8, 4: 2}.get(width)
    if group is None:  # endpoints and the like: bits of big-endian 16-bit words
        bits = np.unpackbits(v.astype(">u2").view(np.uint8)).reshape(m, 16)[:, 16 - width:]
        return np.packbits(bits.reshape(-1))
    if m % group:
        v = np.concatenate([v, np.zeros(group - m % group, v.dtype)])
    v = v.astype(np.uint8, copy=False)
    if width == 1:
        out = np.packbits(v)
    elif width == 2:  # 4 values per byte: the product's top byte (in place: no temporaries)
        w = np.ascontiguousarray(v).view(np.uint32).copy()
        w *= np.uint32((1 << 30) + (1 << 20) + (1 << 10) + 1)
        out = w.view(np.uint8)[3::4]
    elif width == 4:  # 2 values per byte
        w = np.ascontiguousarray(v).view(np.uint16).copy()
        w *= np.uint16(4097)
        out = w.view(np.uint8)[1::2]
    else:  # width 3: 8 values -> 3 bytes, from two 12-bit halves of 4 values each
        w = v.astype(np.uint16).view(np.uint64)
        w *= _u64(_K3)
        w >>= _u64(48)  # 12 bits: 4 values
        h = w.astype(np.uint32).reshape(-1, 2)
        h[:, 0] <<= np.uint32(12)
        h[:, 0] |= h[:, 1]  # 24 bits: 8 values, big-endian in bytes 2, 1, 0 of the word
        out = np.ascontiguousarray(h[:, 0]).view(np.uint8).reshape(-1, 4)[:, 2::-1].reshape(-1)
    return out[:nbytes]


def unpack_fields(data: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_fields`: the first `count` fields of `width` bits (uint8 for width <= 8, else int32)."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if width == 0 or count == 0:
        return np.zeros(count, np.uint8 if width <= 8 else np.int32)
    group = {1: 8, 2: 4, 3: 8, 4: 2}.get(width)
    if group is None:
        bits = np.unpackbits(data)[:count * width].reshape(count, width)
        full = np.zeros((count, 16), np.uint8)
        full[:, 16 - width:] = bits
        return np.packbits(full.reshape(-1)).view(">u2").astype(np.int32)
    need = -(-count // group) * group * width // 8
    if data.size < need:
        data = np.concatenate([data, np.zeros(need - data.size, np.uint8)])
    data = data[:need]
    if width == 1:
        out = np.unpackbits(data)
    elif width == 2:  # spread each byte over 4 bytes (in place)
        b = data.astype(np.uint32)
        b *= np.uint32(1 + (1 << 10) + (1 << 20) + (1 << 30))
        b >>= np.uint32(6)
        b &= np.uint32(0x03030303)
        out = b.view(np.uint8)
    elif width == 4:
        b = data.astype(np.uint16)
        b *= np.uint16(1 + (1 << 12))
        b >>= np.uint16(4)
        b &= np.uint16(0x0F0F)
        out = b.view(np.uint8)
    else:  # 3 bytes -> two 12-bit halves -> 4 values each
        t = data.reshape(-1, 3)
        h = np.empty((t.shape[0], 2), np.uint64)
        h[:, 0] = t[:, 0]
        h[:, 0] <<= _u64(4)
        h[:, 0] |= t[:, 1] >> 4
        h[:, 1] = t[:, 1] & 15
        h[:, 1] <<= _u64(8)
        h[:, 1] |= t[:, 2]
        h = h.reshape(-1)
        h *= _u64(_K3)
        h >>= _u64(9)
        h &= _u64(0x0007000700070007)
        out = h.view(np.uint16).astype(np.uint8)
    return out[:count]


def field_bits(values: np.ndarray, width: int) -> np.ndarray:
    """(rows,) values -> (rows, width) 0/1 bits, MSB first (rows-level metadata only)."""
    v = np.ascontiguousarray(values).reshape(-1)
    if width == 0:
        return np.zeros((v.size, 0), np.uint8)
    return np.unpackbits(v.astype(">u2").view(np.uint8)).reshape(v.size, 16)[:, 16 - width:]


def bits_field(bits: np.ndarray) -> np.ndarray:
    """(rows, width) 0/1 bits -> (rows,) int32 values."""
    rows, width = bits.shape
    if width == 0:
        return np.zeros(rows, np.int32)
    full = np.zeros((rows, 16), np.uint8)
    full[:, 16 - width:] = bits
    return np.packbits(full.reshape(-1)).view(">u2").astype(np.int32)


def _padded(n: int, k: int) -> int:
    """Values per row after padding so that a row of k-bit indices is whole bytes."""
    group = {1: 8, 2: 4, 3: 8, 4: 2}[k]
    return -(-n // group) * group


def _shr(a: np.ndarray, s: int) -> np.ndarray:
    """Rows of bytes (MSB first) moved s bits (0..7) to the right: one more byte per row."""
    rows, w = a.shape
    lanes = np.zeros((rows, w + 1), np.uint16)
    lanes[:, :w] = a
    lanes <<= 8 - s  # byte j's kept bits in the high half, its spilled bits in the low half
    out = (lanes >> 8).astype(np.uint8)
    out[:, 1:] |= (lanes[:, :-1] & 0xFF).astype(np.uint8)
    return out


def _shl(a: np.ndarray, s: int) -> np.ndarray:
    """Rows of bytes moved s bits (0..7) to the left (the first s bits drop out), same width."""
    if s == 0:
        return np.ascontiguousarray(a)
    a16 = a.astype(np.uint16)
    out = ((a16 << s) & 0xFF).astype(np.uint8)
    out[:, :-1] |= (a16[:, 1:] >> (8 - s)).astype(np.uint8)
    return out


def _meta_bytes(meta: list[tuple[np.ndarray, int]], rows: int) -> tuple[np.ndarray, int]:
    """Per-row fields (at most 64 bits in all) -> (rows, ceil(bits / 8)) left-aligned bytes, and the
    number of bits: each row is one big-endian 64-bit word."""
    mbits = sum(w for _, w in meta)
    word = np.zeros(rows, np.uint64)
    at = 0
    for v, w in meta:
        if w:
            word |= np.asarray(v).astype(np.uint64) << np.uint64(64 - at - w)
        at += w
    return word.astype(">u8").view(np.uint8).reshape(rows, 8)[:, :-(-mbits // 8)], mbits


def _meta_fields(mbytes: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Inverse of `_meta_bytes`: int32 fields."""
    rows, mb = mbytes.shape
    full = np.zeros((rows, 8), np.uint8)
    full[:, :mb] = mbytes
    word = full.view(">u8").reshape(rows).astype(np.uint64)
    fields, at = [], 0
    for w in widths:
        fields.append(((word >> np.uint64(64 - at - w)) & np.uint64((1 << w) - 1)).astype(np.int32) if w else
                      np.zeros(rows, np.int32))
        at += w
    return fields


# ------------------------------------------------------------------------------ writer / reader
class Writer:
    """Appends chunks to the payload; `finish` joins them. Chunks are packed bytes; one that does
    not start on a byte boundary is moved into place with byte shifts, never expanded to bits."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, int]] = []  # (packed bytes MSB first, number of bits)

    def bits(self, bits01: np.ndarray) -> None:
        flat = np.ascontiguousarray(bits01, dtype=np.uint8).reshape(-1)
        self.chunks.append((np.packbits(flat), flat.size))

    def fields(self, values: np.ndarray, width: int) -> None:
        values = np.asarray(values).reshape(-1)
        self.chunks.append((pack_fields(values, width), values.size * width))

    def meta(self, meta: list[tuple[np.ndarray, int]], rows: int) -> None:
        """Per-row fields, row after row (the VBR endpoint section)."""
        mbytes, mbits = _meta_bytes(meta, rows)
        self.chunks.append(_records(mbytes, mbits, rows))

    def records(self, meta: list[tuple[np.ndarray, int]], idx: np.ndarray, k: int) -> None:
        """Interleaved records [meta fields | indices] per row (the CBR layout)."""
        rows, n = idx.shape
        mbytes, mbits = _meta_bytes(meta, rows)
        npad = _padded(n, k)
        if npad != n:
            idx = np.concatenate([idx, np.zeros((rows, npad - n), np.uint8)], axis=1)
        ib = pack_fields(idx.reshape(-1), k).reshape(rows, npad * k // 8)
        s0 = mbits % 8
        rb = -(-(mbits + n * k) // 8)
        rec = np.zeros((rows, rb), np.uint8)
        rec[:, :mbytes.shape[1]] = mbytes
        if s0 == 0:
            rec[:, mbits // 8:] = ib[:, :rb - mbits // 8]
        else:  # indices start inside the last meta byte
            rec[:, mbits // 8:] |= _shr(ib, s0)[:, :rb - mbits // 8]
        self.chunks.append(_records(rec, mbits + n * k, rows))

    def finish(self) -> tuple[bytes, int]:
        nbits = sum(n for _, n in self.chunks)
        out = np.zeros((nbits + 7) // 8 + 1, np.uint8)
        pos = 0
        for data, n in self.chunks:
            if n == 0:
                continue
            nb = (n + 7) // 8
            if pos % 8 == 0:
                out[pos // 8:pos // 8 + nb] |= data[:nb]
            else:
                sh = _shr(data[:nb].reshape(1, -1), pos % 8)[0]
                out[pos // 8:pos // 8 + sh.size] |= sh
            pos += n
        return out[:(nbits + 7) // 8].tobytes(), nbits


def _group_layout(r: int, rb: int):
    """Byte offset and bit shift of record p (0..7) inside a group of eight r-bit records."""
    p = np.arange(8)
    return p * r // 8, (p * r % 8).astype(np.uint16)[None, :, None]


def _records(rec: np.ndarray, r: int, rows: int) -> tuple[np.ndarray, int]:
    """(rows, ceil(r / 8)) left-aligned records of r bits -> one packed chunk, record i at bit i * r.

    Eight records span exactly r bytes, so they are laid out group by group: record p of every
    group moves (p * r) % 8 bits right (all groups and positions in one array operation) and
    lands at byte (p * r) // 8 of its group."""
    if r % 8 == 0:
        return rec.reshape(-1), rows * r
    rb = rec.shape[1]
    groups = -(-rows // 8)
    lanes = np.zeros((groups * 8, rb + 1), np.uint16)
    lanes[:rows, :rb] = rec
    lanes = lanes.reshape(groups, 8, rb + 1)
    offset, shift = _group_layout(r, rb)
    lanes <<= 8 - shift  # each byte's kept bits in the high half, its spilled bits in the low half
    moved = (lanes >> 8).astype(np.uint8)
    moved[:, :, 1:] |= (lanes[:, :, :-1] & 0xFF).astype(np.uint8)
    out = np.zeros((groups, r + rb + 1), np.uint8)
    for p in range(8):  # consecutive records share a byte: OR them in one position at a time
        out[:, offset[p]:offset[p] + rb + 1] |= moved[:, p]
    return out[:, :r].reshape(-1)[:(rows * r + 7) // 8], rows * r


def _unrecords(data: np.ndarray, r: int, rows: int, start: int = 0, length: int | None = None) -> np.ndarray:
    """Inverse of `_records`, for bits [start, start + length) of every record: (rows,
    ceil(length / 8)) left-aligned bytes (bits after `length` not cleared)."""
    length = r - start if length is None else length
    nb = -(-length // 8)
    if r % 8 == 0 and start % 8 == 0:
        return data[:rows * r // 8].reshape(rows, r // 8)[:, start // 8:start // 8 + nb]
    groups = -(-rows // 8)
    body = np.zeros((groups + 1) * r, np.uint8)  # one spare group: windows may run past a record's end
    body[:min(data.size, groups * r)] = data[:groups * r]
    grid = body.reshape(groups + 1, r)
    first = (np.arange(8) * r + start)  # bit where the wanted part of record p starts in its group
    offset, shift = first // 8, (first % 8).astype(np.uint16)[None, :, None]
    window = np.zeros((groups, 8, nb + 1), np.uint16)
    for p in range(8):
        take = min(nb + 1, r - offset[p])
        window[:, p, :take] = grid[:groups, offset[p]:offset[p] + take]
    out = ((window[:, :, :-1] << shift) & 0xFF) | (window[:, :, 1:] >> (8 - shift))
    return out.astype(np.uint8).reshape(groups * 8, nb)[:rows]


class BitReader:
    """Sequential reader over the payload that reports truncation as a UserError. Reads move bytes
    (shifting when they do not start on a byte boundary); only small bit fields are unpacked."""

    def __init__(self, payload: bytes, n_bits: int):
        self.data = np.frombuffer(payload, np.uint8)
        self.n_bits = n_bits
        self.pos = 0

    def _advance(self, count: int) -> int:
        if self.pos + count > self.n_bits:
            raise UserError(f"fmc payload too short: need {count} bits at bit {self.pos}, "
                            f"only {self.n_bits - self.pos} left")
        start = self.pos
        self.pos += count
        return start

    def _packed(self, start: int, count: int) -> np.ndarray:
        """Bytes holding bits [start, start + count), MSB first (bits after them not cleared)."""
        first, nb = start // 8, (count + 7) // 8
        if start % 8 == 0:
            return self.data[first:first + nb]
        window = np.zeros(nb + 1, np.uint8)
        chunk = self.data[first:first + nb + 1]
        window[:chunk.size] = chunk
        return _shl(window.reshape(1, -1), start % 8)[0, :nb]

    def take(self, count: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """`count` bits as a 0/1 uint8 array."""
        start = self._advance(count)
        out = np.unpackbits(self._packed(start, count))[:count]
        return out.reshape(shape) if shape is not None else out

    def fields(self, count: int, width: int) -> np.ndarray:
        start = self._advance(count * width)
        return unpack_fields(self._packed(start, count * width), width, count)

    def meta(self, rows: int, widths: list[int]) -> list[np.ndarray]:
        """Inverse of `Writer.meta`."""
        r = sum(widths)
        start = self._advance(rows * r)
        return _meta_fields(_unrecords(self._packed(start, rows * r), r, rows), widths)

    def records(self, rows: int, widths: list[int], n: int, k: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Inverse of `Writer.records`: the meta fields (int32 each) and the (rows, n) uint8 indices."""
        mbits = sum(widths)
        r = mbits + n * k
        start = self._advance(rows * r)
        data = self._packed(start, rows * r)
        npad = _padded(n, k)
        idx_bytes = _unrecords(data, r, rows, mbits, n * k)
        if npad != n:  # padding values of a row are not in the stream: clear their bits
            full = np.zeros((rows, npad * k // 8), np.uint8)
            full[:, :idx_bytes.shape[1]] = idx_bytes
            mask = np.zeros(npad * k, np.uint8)
            mask[:n * k] = 1
            idx_bytes = full & np.packbits(mask)
        idx = unpack_fields(np.ascontiguousarray(idx_bytes).reshape(-1), k, rows * npad).reshape(rows, npad)[:, :n]
        meta = _unrecords(data, r, rows, 0, mbits) if mbits else np.zeros((rows, 0), np.uint8)
        return _meta_fields(meta, widths), idx

    def finish(self) -> None:
        if self.pos != self.n_bits:
            raise UserError(f"fmc payload has {self.n_bits - self.pos} unread bits; stream and header disagree")
