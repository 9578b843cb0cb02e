"""Cutting an (N, C, H, W) map into (channel-depth, height, width) blocks and back.

Why replicate padding: edge blocks are padded by repeating the last row/column/channel, so the
padding never widens a block's min..max range (zero padding would spoil blocks of large values)
and an all-zero edge stays an all-zero block. The original shape is kept in the stream header and
the padding is cropped on decode. Torch on the map's device; the permutation and the dtype
conversion happen in one copy.
"""
from __future__ import annotations

import torch


def grid(shape: tuple[int, ...], block: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(N, C-blocks, H-blocks, W-blocks) of a map."""
    n, c, h, w = shape
    return n, -(-c // block[0]), -(-h // block[1]), -(-w // block[2])


def n_blocks(shape: tuple[int, ...], block: tuple[int, int, int]) -> int:
    g = grid(shape, block)
    return g[0] * g[1] * g[2] * g[3]


def _edge_pad(x: torch.Tensor, sizes: tuple[int, int, int]) -> torch.Tensor:
    for dim, size in zip((1, 2, 3), sizes):
        if size > x.shape[dim]:
            idx = torch.arange(size, device=x.device).clamp_(max=x.shape[dim] - 1)
            x = x.index_select(dim, idx)
    return x


def to_blocks(x: torch.Tensor, block: tuple[int, int, int], dtype: torch.dtype | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) -> (n_blocks, bc*bh*bw) in `dtype` (into `out` if given), blocks in (N, C, H, W)
    raster order."""
    bc, bh, bw = block
    n = x.shape[0]
    _, gc, gh, gw = grid(tuple(x.shape), block)
    x = _edge_pad(x, (gc * bc, gh * bh, gw * bw))
    if out is None:
        out = torch.empty((n * gc * gh * gw, bc * bh * bw), dtype=dtype or x.dtype, device=x.device)
    out.view(n, gc, gh, gw, bc, bh, bw).copy_(x.view(n, gc, bc, gh, bh, gw, bw).permute(0, 1, 3, 5, 2, 4, 6))
    return out


def from_blocks(blocks: torch.Tensor, shape: tuple[int, ...], block: tuple[int, int, int],
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inverse of `to_blocks`, cropping the padding; the result is contiguous, in `dtype`."""
    bc, bh, bw = block
    n, c, h, w = shape
    _, gc, gh, gw = grid(shape, block)
    x = blocks.view(n, gc, gh, gw, bc, bh, bw).permute(0, 1, 4, 2, 5, 3, 6)
    out = torch.empty((n, c, h, w), dtype=dtype or blocks.dtype, device=blocks.device)
    if (gc * bc, gh * bh, gw * bw) == (c, h, w):
        out.view(n, gc, bc, gh, bh, gw, bw).copy_(x)
    else:
        out.copy_(x.reshape(n, gc * bc, gh * bh, gw * bw)[:, :c, :h, :w])
    return out
