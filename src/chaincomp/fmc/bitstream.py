"""Bit packing and the container header of the feature-map codec.

Why a separate module: the block coder decides *what* to store (integers of known widths); this
module only decides *how* they become bytes, so the byte layout can be audited in one place.

Packing is vectorised with numpy over whole arrays, on the host (the bytes end up there anyway):
k-bit indices become bytes with one integer multiply per machine word (`pack_fields`), 16-bit
endpoints through their big-endian bytes, and chunks that do not start on a byte boundary are
joined with one flat unpack -> concatenate -> `np.packbits`. There is no Python loop per block or
per value; the only loops run over the handful of fields.

Container layout (little endian), version 1::

    magic "CCFM" | version u8 | method u8 | dtype u8 | bits_in u8 | rate u8 | index_bits u8 |
    block 3*u8 | n_scales u8 | scale ids 4*u8 | tag code lengths 4*u8 | shape 4*u32 |
    qscale f32 | payload_bits u64 | crc32 u32 | payload bytes

The CRC32 covers the header (without the CRC field) and the payload, so any flipped bit in either
is reported instead of decoding to a silently wrong tensor.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

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
    """Serialise header + payload and append the CRC32 of both."""
    scales = tuple(header.scales) + (0,) * (4 - len(header.scales))
    head = struct.pack(
        _FMT, MAGIC, VERSION, header.method, header.dtype, header.bits_in, header.rate,
        header.index_bits, *header.block, len(header.scales), *scales, *header.tag_lengths,
        *header.shape, header.qscale, header.payload_bits,
    )
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack(_CRC, crc) + payload


def read(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a container; every failure is a UserError naming the cause."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UserError(f"fmc decode expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise UserError(f"fmc stream truncated: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
    if data[:4] != MAGIC:
        raise UserError(f"not an fmc stream: magic {data[:4]!r} != {MAGIC!r}")
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
    if zlib.crc32(payload, zlib.crc32(data[:head_len])) != crc:
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
    elif width == 2:  # 4 values per byte
        w = np.ascontiguousarray(v).view(np.uint32).astype(np.uint64)
        out = ((w * _u64((1 << 30) + (1 << 20) + (1 << 10) + 1)) >> _u64(24)).astype(np.uint8)
    elif width == 4:  # 2 values per byte
        w = np.ascontiguousarray(v).view(np.uint16).astype(np.uint32)
        out = ((w * np.uint32(4097)) >> np.uint32(8)).astype(np.uint8)
    else:  # width 3: 8 values -> 3 bytes, from two 12-bit halves of 4 values each
        w = v.astype(np.uint16).view(np.uint64)
        h = ((w * _u64(_K3)) >> _u64(48)) & _u64(0xFFF)
        h = h.astype(np.uint32).reshape(-1, 2)
        word = (h[:, 0] << np.uint32(12)) | h[:, 1]  # 24 bits
        out = np.stack([(word >> np.uint32(16)), (word >> np.uint32(8)), word], axis=1).astype(np.uint8).reshape(-1)
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
    elif width == 2:
        b = data.astype(np.uint32)
        out = (((b * np.uint32(1 + (1 << 10) + (1 << 20) + (1 << 30))) >> np.uint32(6))
               & np.uint32(0x03030303)).view(np.uint8)
    elif width == 4:
        b = data.astype(np.uint16)
        out = (((b * np.uint16(1 + (1 << 12))) >> np.uint16(4)) & np.uint16(0x0F0F)).view(np.uint8)
    else:
        t = data.reshape(-1, 3).astype(np.uint32)
        word = (t[:, 0] << np.uint32(16)) | (t[:, 1] << np.uint32(8)) | t[:, 2]
        h = np.stack([word >> np.uint32(12), word & np.uint32(0xFFF)], axis=1).reshape(-1).astype(np.uint64)
        out = (((h * _u64(_K3)) >> _u64(9)) & _u64(0x0007000700070007)).view(np.uint16).astype(np.uint8)
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


# ------------------------------------------------------------------------------ writer / reader
class Writer:
    """Appends chunks to the payload; `finish` joins them (bytes when every chunk is whole bytes,
    otherwise via one flat unpack -> concatenate -> pack over the bits)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, int]] = []  # (packed bytes MSB first, number of bits)

    def bits(self, bits01: np.ndarray) -> None:
        flat = np.ascontiguousarray(bits01, dtype=np.uint8).reshape(-1)
        self.chunks.append((np.packbits(flat), flat.size))

    def fields(self, values: np.ndarray, width: int) -> None:
        values = np.asarray(values).reshape(-1)
        self.chunks.append((pack_fields(values, width), values.size * width))

    def records(self, meta: list[tuple[np.ndarray, int]], idx: np.ndarray, k: int) -> None:
        """Interleaved records [meta fields | indices] per row (the CBR layout)."""
        rows, n = idx.shape
        mbits = sum(w for _, w in meta)
        meta_bits = np.concatenate([field_bits(v, w) for v, w in meta], axis=1) if meta else \
            np.zeros((rows, 0), np.uint8)
        npad = _padded(n, k)
        if npad != n:
            idx = np.concatenate([idx, np.zeros((rows, npad - n), np.uint8)], axis=1)
        idx_bytes = pack_fields(idx.reshape(-1), k).reshape(rows, npad * k // 8)
        if mbits % 8 == 0 and n * k % 8 == 0:
            meta_bytes = np.packbits(meta_bits.reshape(-1)).reshape(rows, mbits // 8)
            self.chunks.append((np.concatenate([meta_bytes, idx_bytes], axis=1).reshape(-1),
                                rows * (mbits + n * k)))
            return
        idx_bits = np.unpackbits(idx_bytes.reshape(-1)).reshape(rows, npad * k)[:, :n * k]
        self.bits(np.concatenate([meta_bits, idx_bits], axis=1))

    def finish(self) -> tuple[bytes, int]:
        nbits = sum(n for _, n in self.chunks)
        if all(n % 8 == 0 for _, n in self.chunks[:-1]):
            data = np.concatenate([c for c, _ in self.chunks]) if self.chunks else np.zeros(0, np.uint8)
        else:
            data = np.packbits(np.concatenate([np.unpackbits(c)[:n] for c, n in self.chunks]))
        return data.tobytes(), nbits


class BitReader:
    """Sequential reader over the payload that reports truncation as a UserError; byte-aligned
    reads take bytes directly, others go through the payload unpacked once to bits."""

    def __init__(self, payload: bytes, n_bits: int):
        self.data = np.frombuffer(payload, np.uint8)
        self.n_bits = n_bits
        self._bits: np.ndarray | None = None
        self.pos = 0

    def _advance(self, count: int) -> int:
        if self.pos + count > self.n_bits:
            raise UserError(f"fmc payload too short: need {count} bits at bit {self.pos}, "
                            f"only {self.n_bits - self.pos} left")
        start = self.pos
        self.pos += count
        return start

    def _unpacked(self) -> np.ndarray:
        if self._bits is None:
            self._bits = np.unpackbits(self.data)[:self.n_bits]
        return self._bits

    def _packed(self, start: int, count: int) -> np.ndarray:
        """Bytes holding bits [start, start + count), MSB first (zero padded)."""
        if start % 8 == 0:
            return self.data[start // 8:(start + count + 7) // 8]
        return np.packbits(self._unpacked()[start:start + count])

    def take(self, count: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """`count` bits as a 0/1 uint8 array."""
        start = self._advance(count)
        out = self._unpacked()[start:start + count]
        return out.reshape(shape) if shape is not None else out

    def fields(self, count: int, width: int) -> np.ndarray:
        start = self._advance(count * width)
        return unpack_fields(self._packed(start, count * width), width, count)

    def records(self, rows: int, widths: list[int], n: int, k: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Inverse of `Writer.records`: the meta fields (int32 each) and the (rows, n) uint8 indices."""
        mbits = sum(widths)
        start = self._advance(rows * (mbits + n * k))
        npad = _padded(n, k)
        if mbits % 8 == 0 and n * k % 8 == 0 and start % 8 == 0:
            rec = self.data[start // 8:start // 8 + rows * (mbits + n * k) // 8].reshape(rows, -1)
            meta_bits = np.unpackbits(np.ascontiguousarray(rec[:, :mbits // 8]).reshape(-1)).reshape(rows, mbits)
            idx_bytes = rec[:, mbits // 8:]
        else:
            rec = self._unpacked()[start:start + rows * (mbits + n * k)].reshape(rows, mbits + n * k)
            meta_bits = rec[:, :mbits]
            idx_bits = rec[:, mbits:]
            if npad != n:
                idx_bits = np.concatenate([idx_bits, np.zeros((rows, (npad - n) * k), np.uint8)], axis=1)
            idx_bytes = np.packbits(idx_bits.reshape(-1))
        idx = unpack_fields(np.ascontiguousarray(idx_bytes).reshape(-1), k, rows * npad).reshape(rows, npad)[:, :n]
        fields, at = [], 0
        for w in widths:
            fields.append(bits_field(meta_bits[:, at:at + w]))
            at += w
        return fields, idx

    def finish(self) -> None:
        if self.pos != self.n_bits:
            raise UserError(f"fmc payload has {self.n_bits - self.pos} unread bits; stream and header disagree")
