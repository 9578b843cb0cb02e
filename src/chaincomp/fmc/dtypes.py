"""What the codec stores for each input dtype, and exact conversions to and from work floats.

Why separate: the block coder only sees float work tensors; everything dtype-specific (which 16-
or 8-bit form a map is moved in, raw bit patterns of endpoints, rounding back to the original
dtype, refusing NaN/Inf) lives here. All of it is torch on the map's own device.

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
# storage dtype -> (integer dtype of the same width, its value range as unsigned bits)
VIEW = {torch.float16: (torch.int16, 16), torch.bfloat16: (torch.int16, 16), torch.int16: (torch.int16, 16),
        torch.int8: (torch.int8, 8), torch.uint8: (torch.uint8, 8)}


def work_dtype(storage: torch.dtype) -> torch.dtype:
    # bfloat16 spans float32's exponent range: squared errors need float64 to stay finite.
    return torch.float64 if storage == torch.bfloat16 else torch.float32


def to_storage(values: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """Work-dtype values -> tensor of the stored dtype (round to nearest, clamp for integers)."""
    if storage.is_floating_point:
        return values.to(storage)
    info = torch.iinfo(storage)
    return values.round().clamp_(info.min, info.max).to(storage)


def round_for(values: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """What `to_storage` does before the cast (integers: round and clamp), left in the work dtype."""
    if storage.is_floating_point:
        return values
    info = torch.iinfo(storage)
    return values.round().clamp_(info.min, info.max)


def value_bits(values: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """Work values -> their stored bit patterns as non-negative int32 (< 2^bits)."""
    view, bits = VIEW[storage]
    return to_storage(values, storage).view(view).to(torch.int32) & ((1 << bits) - 1)


def bits_value(raw: torch.Tensor, storage: torch.dtype, work: torch.dtype) -> torch.Tensor:
    """Stored bit patterns (non-negative ints < 2^bits) -> work values (exact)."""
    view, bits = VIEW[storage]
    raw = raw.to(torch.int32)
    if view != torch.uint8:  # two's complement of the same width
        raw = torch.where(raw >= 1 << (bits - 1), raw - (1 << bits), raw)
    return raw.to(view).view(storage).to(work)


def _non_finite(x: torch.Tensor) -> bool:
    """Any NaN/Inf: the largest magnitude bit pattern reaches the all-ones exponent (integer
    passes only; boolean reductions are slow on CPU)."""
    if x.dtype == torch.float32:
        return int((x.view(torch.int32) & 0x7FFFFFFF).amax()) >= 0x7F800000
    exp = 0x7C00 if x.dtype == torch.float16 else 0x7F80
    return int((x.view(torch.int16) & 0x7FFF).amax()) >= exp


def has_negative_zero(x: torch.Tensor) -> bool:
    """Any -0.0 in a 16-bit float tensor: its pattern 0x8000 is the smallest int16."""
    return x.is_floating_point() and int(x.view(torch.int16).amin()) == -0x8000


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
    x = x.detach().contiguous()
    if x.is_floating_point() and _non_finite(x):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise UserError(f"fmc refuses non-finite input: {nan} NaN and {inf} Inf values")
    if x.dtype != torch.float32:
        return x, code, 1.0
    if storage == torch.float16:
        y = x.to(torch.float16)
        if _non_finite(y):
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


def step(values: torch.Tensor, up: bool, storage: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The next stored value above (`up`) or below each value, in the work dtype, and whether it
    exists (a finite value of the stored dtype). One code step flips the lowest bit of the stored
    pattern; that is what `coder.nudge` uses to signal a bit through an endpoint."""
    work = values.dtype
    if not storage.is_floating_point:
        info = torch.iinfo(storage)
        out = values + (1 if up else -1)
        return out, (out >= info.min) & (out <= info.max)
    code = value_bits(values, storage)  # sign-magnitude 16-bit pattern
    neg = code >= 0x8000
    mag = code & 0x7FFF
    # away from zero on the side we move to, towards zero on the other; +-0 step to +-min subnormal
    grow = ~neg if up else neg
    new_mag = torch.where(grow | (mag == 0), mag + 1, mag - 1)
    new_neg = torch.where(mag == 0, torch.full_like(neg, not up), neg)
    new_code = new_mag | (new_neg.to(torch.int32) << 15)
    exp_mask = 0x7C00 if storage == torch.float16 else 0x7F80
    ok = (new_code & exp_mask) != exp_mask
    return bits_value(torch.where(ok, new_code, code), storage, work), ok
