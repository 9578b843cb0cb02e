"""The vectorised bit packing against the plain bit-by-bit definition (MSB first)."""
from __future__ import annotations

import numpy as np
import pytest

from chaincomp.errors import UserError
from chaincomp.fmc import bitstream as bs


def naive_bits(values, width):
    return np.array([(int(v) >> (width - 1 - j)) & 1 for v in values for j in range(width)], np.uint8)


@pytest.mark.parametrize("width", list(range(1, 17)))
@pytest.mark.parametrize("count", [0, 1, 3, 7, 8, 13, 64, 101])
def test_pack_fields_is_msb_first_concatenation(width, count):
    rng = np.random.default_rng(width * 1000 + count)
    values = rng.integers(0, 1 << width, count)
    packed = bs.pack_fields(values, width)
    expect = np.packbits(naive_bits(values, width)) if count else np.zeros(0, np.uint8)
    assert np.array_equal(packed, expect)
    assert np.array_equal(bs.unpack_fields(packed, width, count).astype(np.int64), values)


def test_every_k_bit_pattern_round_trips():
    """All values of every index width in every lane position of the multiply tricks."""
    for k in (1, 2, 3, 4):
        values = np.tile(np.arange(1 << k), 8)
        for shift in range(8):
            v = np.roll(values, shift)
            assert np.array_equal(bs.pack_fields(v, k), np.packbits(naive_bits(v, k)))
            assert np.array_equal(bs.unpack_fields(bs.pack_fields(v, k), k, v.size), v)


@pytest.mark.parametrize("widths,n,k", [([16, 16, 1], 64, 3), ([16, 16, 0], 16, 2), ([8, 8, 2], 15, 3),
                                        ([16, 16, 1], 3, 1), ([8, 8, 0], 5, 4), ([16, 16, 2], 1, 2)])
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 30])
@pytest.mark.parametrize("lead", [0, 3])
def test_records_match_their_bits_at_any_offset(widths, n, k, rows, lead):
    """CBR records [meta | indices], after `lead` bits of something else, byte-exact against the
    concatenated bits, and read back."""
    rng = np.random.default_rng(rows * 31 + n + lead)
    meta = [(rng.integers(0, 1 << w, rows) if w else np.zeros(rows, np.int64), w) for w in widths]
    idx = rng.integers(0, 1 << k, (rows, n)).astype(np.uint8)
    w = bs.Writer()
    head = rng.integers(0, 2, lead).astype(np.uint8)
    w.bits(head)
    w.records(meta, idx, k)
    data, nbits = w.finish()
    bits = [head]
    for r in range(rows):
        bits += [naive_bits([v[r]], wd) for v, wd in meta] + [naive_bits(idx[r], k)]
    flat = np.concatenate(bits)
    assert nbits == flat.size and data == np.packbits(flat).tobytes()
    reader = bs.BitReader(data, nbits)
    assert np.array_equal(reader.take(lead), head)
    fields, back = reader.records(rows, widths, n, k)
    reader.finish()
    assert np.array_equal(back, idx)
    for (v, _), f in zip(meta, fields):
        assert np.array_equal(f, v)


def test_mixed_chunks_round_trip():
    rng = np.random.default_rng(5)
    w = bs.Writer()
    planes = [rng.integers(0, 2, 37).astype(np.uint8), rng.integers(0, 2, 5).astype(np.uint8)]
    meta = [(rng.integers(0, 1 << 16, 11), 16), (rng.integers(0, 1 << 16, 11), 16), (rng.integers(0, 2, 11), 1)]
    vals = rng.integers(0, 8, 11 * 9)
    consts = rng.integers(0, 1 << 16, 4)
    for p in planes:
        w.bits(p)
    w.meta(meta, 11)
    w.fields(vals, 3)
    w.fields(consts, 16)
    data, nbits = w.finish()
    flat = np.concatenate(planes + [np.concatenate([naive_bits([v[r]], wd) for v, wd in meta]) for r in range(11)]
                          + [naive_bits(vals, 3), naive_bits(consts, 16)])
    assert nbits == flat.size and data == np.packbits(flat).tobytes()
    r = bs.BitReader(data, nbits)
    assert np.array_equal(r.take(37), planes[0]) and np.array_equal(r.take(5), planes[1])
    assert all(np.array_equal(f, v) for f, (v, _) in zip(r.meta(11, [16, 16, 1]), meta))
    assert np.array_equal(r.fields(vals.size, 3), vals)
    assert np.array_equal(r.fields(4, 16), consts)
    r.finish()
    with pytest.raises(UserError, match="too short"):
        r.take(1)
