"""What the codec stores for each input dtype, and exact conversions to and from work floats.

Why separate: the block coder only sees float work arrays; everything dtype-specific (which 16- or
8-bit form a map is moved in, raw bit patterns of endpoints, rounding back to the original dtype,
refusing NaN/Inf) lives here. Conversions go through numpy where possible: torch's small
elementwise ops were several times slower on the 2-core benchmark machine (thread contention).

Supported: float16, bfloat16, int16 (bits_in=16), int8, uint8 (bits_in=8), and float32, which is
first cast to float16 (bits_in=16; |x| > 65504 is refused) or quantised to int8 with one
per-tensor scale max|x|/127 kept in the header (bits_in=8).
"""
from __future__ import annotations

import numpy as np
import torch

from chaincomp.errors import UserError

# dtype code -> (dtype, storage dtype for bits_in=16, storage dtype for bits_in=8)
DTYPES = {
    1: (torch.float16, torch.float16, None),
    2: (torch.bfloat16, torch.bfloat16, None),
    3: (torch.int16, torch.int16, None),
    4: (torch.int8, None, torch.int8),
    5: (torch.uint8, None, torch.uint8),
    6: (torch.float32, torch.float16, torch.int8),
}
CODE = {d[0]: c for c, d in DTYPES.items()}
VIEW = {torch.float16: (torch.int16, np.uint16), torch.bfloat16: (torch.int16, np.uint16),
        torch.int16: (torch.int16, np.uint16), torch.int8: (torch.int8, np.uint8),
        torch.uint8: (torch.uint8, np.uint8)}


def work_dtype(storage: torch.dtype) -> np.dtype:
    # bfloat16 spans float32's exponent range: squared errors need float64 to stay finite.
    return np.dtype(np.float64 if storage == torch.bfloat16 else np.float32)


def to_storage(values: np.ndarray, storage: torch.dtype) -> torch.Tensor:
    """Work-dtype values -> tensor of the stored dtype (round to nearest, clamp for integers)."""
    t = torch.from_numpy(np.ascontiguousarray(values))
    if storage.is_floating_point:
        return t.to(storage)
    info = torch.iinfo(storage)
    return t.round().clamp_(info.min, info.max).to(storage)


def value_bits(values: np.ndarray, storage: torch.dtype) -> np.ndarray:
    view, unsigned = VIEW[storage]
    return to_storage(values, storage).view(view).numpy().view(unsigned)


def bits_value(raw: np.ndarray, storage: torch.dtype, work: np.dtype) -> np.ndarray:
    view, unsigned = VIEW[storage]
    same_width = {torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8}[view]
    t = torch.from_numpy(raw.astype(unsigned).view(same_width)).view(storage)
    return t.to(torch.float64 if work == np.float64 else torch.float32).numpy()


def work_array(storage: torch.Tensor, work: np.dtype) -> np.ndarray:
    """Stored map -> numpy work floats (exact); numpy, because torch ops contend for threads."""
    if storage.dtype == torch.bfloat16:  # bfloat16 is the top half of a float32
        bits = storage.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
        return (bits << np.uint32(16)).view(np.float32).astype(work)
    return storage.numpy().astype(work)


def _non_finite(x: torch.Tensor) -> bool:
    """Any NaN/Inf, from the exponent bits (no float pass)."""
    if x.dtype == torch.float32:
        return not np.isfinite(x.numpy()).all()
    mask = np.uint16(0x7C00 if x.dtype == torch.float16 else 0x7F80)
    bits = x.view(torch.int16).numpy().view(np.uint16)
    return bool(((bits & mask) == mask).any())


def prepare(x, bits_in: int) -> tuple[torch.Tensor, int, float]:
    """Validate the input; return (map in its bits_in storage dtype, dtype code, dequant scale)."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"fmc encode expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in CODE:
        raise UserError(f"fmc cannot code dtype {x.dtype}; use float16, bfloat16, int16, int8, uint8 or float32")
    if x.dim() != 4:
        raise UserError(f"fmc encode expects an (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise UserError(f"fmc cannot code an empty feature map (shape {tuple(x.shape)})")
    if bits_in not in (8, 16):
        raise UserError(f"fmc bits_in must be 16 or 8, got {bits_in}")
    code = CODE[x.dtype]
    storage = DTYPES[code][1 if bits_in == 16 else 2]
    if storage is None:
        raise UserError(f"fmc: {x.dtype} is a {x.element_size() * 8}-bit type; declare bits_in="
                        f"{x.element_size() * 8}, not {bits_in}")
    x = x.detach().cpu().contiguous()
    if x.is_floating_point() and _non_finite(x):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise UserError(f"fmc refuses non-finite input: {nan} NaN and {inf} Inf values")
    if x.dtype != torch.float32:
        return x, code, 1.0
    if storage == torch.float16:
        y = x.to(torch.float16)
        if not torch.isfinite(y).all():
            raise UserError("fmc: float32 map exceeds the float16 range (|x| > 65504) for bits_in=16; "
                            "pass a bfloat16 tensor or use bits_in=8")
        return y, code, 1.0
    qscale = float(np.float32(max(float(x.abs().max()) / 127.0, np.finfo(np.float32).tiny)))
    return torch.round(x / qscale).clamp_(-127, 127).to(torch.int8), code, qscale


def restore(stored: torch.Tensor, dtype: torch.dtype, qscale: float) -> torch.Tensor:
    """Stored form -> the caller's dtype (float32 maps come back from float16 or dequantised int8)."""
    if dtype != torch.float32:
        return stored
    return stored.to(torch.float32) * qscale if stored.dtype == torch.int8 else stored.to(torch.float32)
