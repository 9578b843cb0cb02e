"""Cutting an (N, C, H, W) map into (channel-depth, height, width) blocks and back.

Why replicate padding: edge blocks are padded by repeating the last row/column/channel, so the
padding never widens a block's min..max range (zero padding would spoil blocks of large values)
and an all-zero edge stays an all-zero block. The original shape is kept in the stream header and
the padding is cropped on decode. Works on numpy arrays (the codec's arithmetic runs in numpy).
"""
from __future__ import annotations

import numpy as np


def grid(shape: tuple[int, ...], block: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(N, C-blocks, H-blocks, W-blocks) of a map."""
    n, c, h, w = shape
    return n, -(-c // block[0]), -(-h // block[1]), -(-w // block[2])


def n_blocks(shape: tuple[int, ...], block: tuple[int, int, int]) -> int:
    g = grid(shape, block)
    return g[0] * g[1] * g[2] * g[3]


def to_blocks(x: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """(N, C, H, W) -> (n_blocks, bc*bh*bw), blocks in (N, C, H, W) raster order."""
    bc, bh, bw = block
    n, c, h, w = x.shape
    _, gc, gh, gw = grid(x.shape, block)
    if (gc * bc, gh * bh, gw * bw) != (c, h, w):
        x = np.pad(x, ((0, 0), (0, gc * bc - c), (0, gh * bh - h), (0, gw * bw - w)), mode="edge")
    x = x.reshape(n, gc, bc, gh, bh, gw, bw).transpose(0, 1, 3, 5, 2, 4, 6)
    return np.ascontiguousarray(x).reshape(n * gc * gh * gw, bc * bh * bw)


def from_blocks(blocks: np.ndarray, shape: tuple[int, ...], block: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `to_blocks`, cropping the padding."""
    bc, bh, bw = block
    n, c, h, w = shape
    _, gc, gh, gw = grid(shape, block)
    x = blocks.reshape(n, gc, gh, gw, bc, bh, bw).transpose(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(n, gc * bc, gh * bh, gw * bw)
    return np.ascontiguousarray(x[:, :c, :h, :w])
