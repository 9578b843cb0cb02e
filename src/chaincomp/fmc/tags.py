"""Per-block tags of the variable-bitrate stream, coded with a tiny Huffman code.

Why: a ReLU map is mostly all-zero blocks, a Gaussian map has none; a fixed 2-bit tag wastes
bits on both. The encoder counts the four tags (zero, constant, low-index, normal), builds a
Huffman code over them (code lengths go in the header; 0 bits when only one tag occurs) and
stores the tags as *bit planes*: plane j holds bit j of every block whose code is longer than j.
The decoder reads plane by plane, which keeps decoding vectorised (no sequential prefix parse).
"""
from __future__ import annotations

import heapq

import numpy as np
import torch

from chaincomp.errors import UserError

from .bitstream import UNUSED, BitReader

ZERO, CONST, LOW, NORMAL = 0, 1, 2, 3
NAMES = ("zero", "const", "low", "normal")


def code_lengths(counts: np.ndarray) -> tuple[int, ...]:
    """Huffman code lengths for the 4 tags; UNUSED for absent tags, 0 if only one tag occurs."""
    used = [i for i in range(4) if counts[i] > 0]
    lengths = [UNUSED] * 4
    if len(used) == 1:
        lengths[used[0]] = 0
        return tuple(lengths)
    heap = [(int(counts[i]), i, [i]) for i in used]  # loop over <= 4 symbols
    heapq.heapify(heap)
    depth = {i: 0 for i in used}
    while len(heap) > 1:
        c1, k1, s1 = heapq.heappop(heap)
        c2, k2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            depth[s] += 1
        heapq.heappush(heap, (c1 + c2, min(k1, k2), s1 + s2))
    for i in used:
        lengths[i] = depth[i]
    return tuple(lengths)


def canonical_codes(lengths: tuple[int, ...]) -> np.ndarray:
    """Canonical prefix codes from lengths (ordered by length, then tag id)."""
    codes = np.zeros(4, np.int64)
    code, prev = 0, 0
    for length, sym in sorted((l, s) for s, l in enumerate(lengths) if l != UNUSED):
        code <<= length - prev
        codes[sym] = code
        code += 1
        prev = length
    return codes


def check_lengths(lengths: tuple[int, ...]) -> None:
    """Reject header code lengths that cannot form a prefix code (corrupt or foreign stream)."""
    used = [l for l in lengths if l != UNUSED]
    if not used or max(used) > 3:
        raise UserError(f"fmc header has invalid tag code lengths {lengths}")
    if len(used) == 1 and used[0] == 0:
        return
    if 0 in used or sum(2.0 ** -l for l in used) > 1.0:
        raise UserError(f"fmc header has invalid tag code lengths {lengths}")


def encode_tags(tags: torch.Tensor, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """Bit planes of the tag code, plane j = bit j of blocks whose code is longer than j."""
    codes = torch.as_tensor(canonical_codes(lengths), device=tags.device)
    lens = torch.tensor([0 if l == UNUSED else l for l in lengths], device=tags.device)
    tl, tc = lens[tags], codes[tags]
    planes = []
    for j in range(int(max((l for l in lengths if l != UNUSED), default=0))):  # at most 3 planes
        active = tl > j
        planes.append(((tc[active] >> (tl[active] - 1 - j)) & 1).to(torch.uint8))
    return planes


def decode_tags(reader: BitReader, n_blocks: int, lengths: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `encode_tags`, reading plane by plane."""
    check_lengths(lengths)
    device = "cpu"
    only = [s for s, l in enumerate(lengths) if l == 0]
    if only:
        return torch.full((n_blocks,), only[0], dtype=torch.int64, device=device)
    codes = canonical_codes(lengths)
    tags = torch.full((n_blocks,), -1, dtype=torch.int64, device=device)
    prefix = torch.zeros(n_blocks, dtype=torch.int64, device=device)
    for j in range(max(l for l in lengths if l != UNUSED)):
        active = (tags < 0).nonzero().view(-1)
        prefix[active] = (prefix[active] << 1) | torch.from_numpy(reader.take(active.numel())).long()
        for sym, l in enumerate(lengths):
            if l == j + 1:
                hit = active[prefix[active] == int(codes[sym])]
                tags[hit] = sym
    if bool((tags < 0).any()):
        raise UserError("fmc payload has an invalid block tag")
    return tags
