"""Baselines at the same bitrate and in the same bitstream as ASC.

Why: ASC's gain must be shown against what a simpler block coder achieves with the same bits.
- "minmax": plain per-block min-max uniform quantization: endpoints min and max, 2^k exactly
  uniform levels, index = round((x - min) / (max - min) * (2^k - 1)) (arithmetic, no thresholds).
- "single_mode": a fixed texture-block codec: one endpoint mode (min..max), one (revised linear)
  scale, threshold selection; i.e. ASC with the switchable mode and the adaptive scale removed.
Neither spends a per-block scale bit, so at (1, 4, 4) with 2-bit indices they use 4.0 bits per
value against ASC's 4.0625 (one scale flag per 16 values); both support CBR and VBR.
All methods share `codec.encode`/`codec.decode`; the method id is in the header, and the method
table lives in `methods` (re-exported here for older imports).
"""
from __future__ import annotations

import torch

from .codec import encode
from .methods import ASC, METHOD_BY_ID, METHODS, MINMAX, SINGLE_MODE, Method, scale_ids

__all__ = ["encode_minmax", "encode_single_mode", "Method", "ASC", "SINGLE_MODE", "MINMAX", "METHODS",
           "METHOD_BY_ID", "scale_ids"]


def encode_minmax(x: torch.Tensor, **kwargs) -> bytes:
    """Min-max uniform baseline; same keywords as `codec.encode` (scales are ignored)."""
    return encode(x, method="minmax", **kwargs)


def encode_single_mode(x: torch.Tensor, **kwargs) -> bytes:
    """Single-mode texture-block baseline; same keywords as `codec.encode` (scales are ignored)."""
    return encode(x, method="single_mode", **kwargs)
