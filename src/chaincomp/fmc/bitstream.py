"""Bit packing and the container header of the feature-map codec.

Why a separate module: the block coder decides *what* to store (integers of known widths); this
module only decides *how* they become bytes, so the byte layout can be audited in one place.

Packing is vectorised with numpy: a field array of width w becomes an (n, w) matrix of 0/1 bytes,
matrices are concatenated and `np.packbits` makes bytes (MSB first). There is no Python loop per
block or per value; the only loops run over bit positions or over the handful of fields.

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


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers (< 2^width, width <= 16) -> trailing axis of `width` bits, MSB first, uint8."""
    v = np.asarray(values)
    if width == 0:
        return np.zeros(v.shape + (0,), np.uint8)
    if width <= 8:
        bits = np.unpackbits(v.astype(np.uint8, copy=False).reshape(-1, 1), axis=1)[:, 8 - width:]
    else:
        be = v.astype(">u2").reshape(-1, 1).view(np.uint8)  # big-endian byte pairs
        bits = np.unpackbits(be, axis=1)[:, 16 - width:]
    return bits.reshape(v.shape + (width,))


def from_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of `to_bits`: trailing bit axis (MSB first) -> uint32 values."""
    width = bits.shape[-1]
    out = np.zeros(bits.shape[:-1], np.uint8 if width <= 8 else np.uint32)
    for j in range(width):  # loop over bit positions, vectorised over values
        out <<= 1
        out |= bits[..., j]
    return out.astype(np.uint32, copy=False)


def pack(parts: list[np.ndarray]) -> tuple[bytes, int]:
    """Concatenate 0/1 arrays (any shape, C order) into bytes; returns (bytes, number of bits)."""
    flat = np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0, np.uint8)
    return np.packbits(flat).tobytes(), int(flat.size)


class BitReader:
    """Sequential reader over the unpacked payload that reports truncation as a UserError."""

    def __init__(self, payload: bytes, n_bits: int):
        self.bits = np.unpackbits(np.frombuffer(payload, np.uint8))[:n_bits]
        self.pos = 0

    def take(self, count: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if self.pos + count > self.bits.size:
            raise UserError(f"fmc payload too short: need {count} bits at bit {self.pos}, "
                            f"only {self.bits.size - self.pos} left")
        out = self.bits[self.pos:self.pos + count]
        self.pos += count
        return out.reshape(shape) if shape is not None else out

    def finish(self) -> None:
        if self.pos != self.bits.size:
            raise UserError(f"fmc payload has {self.bits.size - self.pos} unread bits; stream and header disagree")
