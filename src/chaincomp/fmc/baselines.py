"""Baselines at the same bitrate and in the same bitstream as ASC.

Why: ASC's gain must be shown against what a simpler block coder achieves with the same bits.
- "minmax": plain per-block min-max uniform quantization: endpoints min and max, 2^k exactly
  uniform levels, index = round((x - min) / (max - min) * (2^k - 1)) (arithmetic, no thresholds).
- "single_mode": a fixed texture-block codec: one endpoint mode (min..max), one (revised linear)
  scale, threshold selection; i.e. ASC with the switchable mode and the adaptive scale removed.
Neither spends a per-block scale bit, so at (1, 4, 4) with 2-bit indices they use 4.0 bits per
value against ASC's 4.0625 (one scale flag per 16 values); both support CBR and VBR.
All three methods share `codec.encode`/`codec.decode`; the method id is in the header.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .points import SCALE_ID


@dataclass(frozen=True)
class Method:
    """What the block coder may choose from for one method."""

    name: str
    id: int
    mode_b: bool  # zero-reserved mode available
    fixed_scales: tuple[str, ...] | None  # None: scales come from the caller
    rounding: bool  # arithmetic rounding instead of midpoint thresholds


ASC = Method("asc", 0, True, None, False)
SINGLE_MODE = Method("single_mode", 1, False, ("linear",), False)
MINMAX = Method("minmax", 2, False, ("uniform",), True)
METHODS = {m.name: m for m in (ASC, SINGLE_MODE, MINMAX)}
METHOD_BY_ID = {m.id: m for m in METHODS.values()}


def minmax_indices(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, k: int) -> torch.Tensor:
    """Uniform quantizer index round((v - lo) / (hi - lo) * (2^k - 1)); 0 for constant blocks."""
    span = (hi - lo)[:, None]
    safe = torch.where(span > 0, span, torch.ones_like(span))
    q = torch.round((v - lo[:, None]) / safe * ((1 << k) - 1)).clamp_(0, (1 << k) - 1)
    return torch.where(span > 0, q, torch.zeros_like(q)).to(torch.int64)


def encode_minmax(x: torch.Tensor, **kwargs) -> bytes:
    """Min-max uniform baseline; same keywords as `codec.encode` (scales are ignored)."""
    from .codec import encode  # late import: codec imports this module's method table
    return encode(x, method="minmax", **kwargs)


def encode_single_mode(x: torch.Tensor, **kwargs) -> bytes:
    """Single-mode texture-block baseline; same keywords as `codec.encode` (scales are ignored)."""
    from .codec import encode
    return encode(x, method="single_mode", **kwargs)


def scale_ids(method: Method, scales: tuple[str, ...]) -> tuple[int, ...]:
    """Scale ids the method uses (baselines ignore the caller's scales)."""
    return tuple(SCALE_ID[s] for s in (method.fixed_scales or scales))
