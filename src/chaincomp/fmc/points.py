"""Interpolation points of a block and threshold-based index selection.

Why these tables: hardware interpolates with shifts and adds, so every point fraction is dyadic.
- "linear" (revised linear): i/(n-1) rounded to a 1/256 grid (1/3 -> 85/256, 1/7 -> 37/256), an
  8-bit constant multiply in hardware.
- "log" (log-linear, one point per octave): 0 and range * 2^-j, j = 0, 1, 2, ...: points dense
  near the low end, so a block of small values with one large outlier keeps the outlier exactly
  (it is an endpoint) and spends the other points on the bulk. 4 points: 0, 1/4, 1/2, 1;
  3 points (mode B, k=2): 0, 1/4, 1 (0, 1/2, 1 would equal linear).
- "hlog" (two points per octave): 0 and range * {1, 3/4, 1/2, 3/8, 1/4, 3/16, ...}, milder;
  8 points: 0, 1/8, 3/16, 1/4, 3/8, 1/2, 3/4, 1 (one shift-add per point); equals "log" for
  4 points or fewer.
- "rlog"/"rhlog": the mirror images (dense near the high end), for negative outliers.
- "uniform": exact i/(n-1); only the min-max baseline uses it.

Two endpoint modes, told apart by the order of the stored endpoints (e0, e1):
- e0 < e1, mode A: 2^k points over [e0, e1] = the block's min..max.
- e0 > e1, mode B: index 0 is an exact zero (the ReLU "outlier": the block's extreme), indices
  1..2^k-1 spread over [e1, e0] = min..max of the non-zero values. Needs 2^k-1 >= 2.
- e0 == e1: constant block; every index decodes to e0.
A point is always lo + (hi - lo) * f, computed the same way by encoder and decoder.

Selection compares each value with the midpoints between consecutive points and counts how many
it exceeds (a comparison sum, as a comparator tree in hardware), never a nearest-point search;
ties at a midpoint go to the lower point. The comparisons run on t = (v - lo) / (hi - lo) so the
midpoints are constants of the table; the decoder never needs them. In software every midpoint is
a multiple of 2^-e (e <= 15), so the count is one table lookup at ceil(t * 2^e) (`cells`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SCALES = ("linear", "log", "hlog", "rlog", "rhlog", "uniform")
SCALE_ID = {name: i for i, name in enumerate(SCALES)}
_GRID = 256


@lru_cache(maxsize=None)
def fractions(scale: int, n: int) -> tuple[float, ...]:
    """Fractions of the endpoint range for `n` points of scale id `scale` (ascending, dyadic)."""
    if n == 1:
        return (0.0,)
    name = SCALES[scale]
    if name == "uniform":
        return tuple(i / (n - 1) for i in range(n))
    if name == "linear":
        return tuple(round(i * _GRID / (n - 1)) / _GRID for i in range(n))
    if name in ("log", "rlog") or n <= 4:
        top = [1.0, 0.25] if n == 3 else [2.0 ** -j for j in range(n - 1)]  # 3 points: 1/2 = linear
    else:  # half octaves: 1, 3/4, 1/2, 3/8, ...
        top = [2.0 ** -(j // 2) * (0.75 if j % 2 else 1.0) for j in range(n - 1)]
    log = (0.0,) + tuple(sorted(top))
    if name.startswith("r"):
        return tuple(1.0 - f for f in reversed(log))
    return log


# Tables of the implicit-scale method (`coder.implicit_table`): linear, or log dense towards zero.
IMPLICIT_SCALES = ("linear", "log", "rlog")


def max_gap(scale: int, n: int) -> float:
    """Largest distance between consecutive fractions: the error is at most half of it times range."""
    f = fractions(scale, n)
    return max((b - a for a, b in zip(f, f[1:])), default=0.0)


def bits_for_scales(n_scales: int) -> int:
    """Per-block scale flag width: 0 for one scale, 1 for two, 2 for three or four."""
    return math.ceil(math.log2(n_scales)) if n_scales > 1 else 0


def table(scale_ids: tuple[int, ...], k: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """(2 * n_scales, 2^k) fractions per (mode, scale) combo: rows [A scales..., B scales...].

    Row B's column 0 is a placeholder: index 0 of mode B is the exact zero.
    """
    p = 1 << k
    rows = [fractions(s, p) for s in scale_ids]
    rows += [(0.0,) + fractions(s, p - 1) if p > 2 else (0.0,) * p for s in scale_ids]
    return torch.tensor(rows, dtype=dtype, device=device)


def midpoints(frac: tuple[float, ...]) -> tuple[float, ...]:
    return tuple((a + b) / 2 for a, b in zip(frac, frac[1:]))


def cell_exponent(fracs: list[tuple[float, ...]]) -> int:
    """Smallest e such that every midpoint of every table is a multiple of 2^-e (dyadic tables)."""
    mids = [m for f in fracs for m in midpoints(f)]
    for e in range(40):
        if all((m * 2.0 ** e).is_integer() for m in mids):
            return e
    raise ValueError("point fractions are not dyadic")  # cannot happen for SCALES[:-1]


_LUTS: dict = {}


def _lut(key, build, dtype: torch.dtype, device) -> torch.Tensor:
    full = (key, dtype, str(device))
    if full not in _LUTS:
        _LUTS[full] = torch.as_tensor(build(), dtype=dtype, device=device)
    return _LUTS[full]


def cells(t: torch.Tensor, e: int) -> torch.Tensor:
    """c = ceil(t * 2^e) clamped to [0, 2^e], int32. For a midpoint m = j / 2^e (j integer),
    t > m  <=>  t * 2^e > j  <=>  c > j  exactly (scaling by 2^e is exact), so a table indexed by c
    gives the comparison count of `threshold_index` with one lookup instead of 2^k - 1 comparisons."""
    return (t * float(1 << e)).ceil_().clamp_(0, 1 << e).to(torch.int32)


def index_lut(fracs: tuple[tuple[float, ...], ...], e: int, device) -> torch.Tensor:
    """(len(fracs) * (2^e + 1),) uint8: for table i and cell c, entry i * (2^e + 1) + c is the number
    of midpoints of table i below c / 2^e, i.e. the point index of every t in that cell."""
    def build():
        grid = np.arange((1 << e) + 1)
        return np.concatenate([np.searchsorted(np.array([m * 2.0 ** e for m in midpoints(f)]), grid, side="left")
                               for f in fracs]).astype(np.uint8)
    return _lut(("index", fracs, e), build, torch.uint8, device)


def fraction_lut(fracs: tuple[tuple[float, ...], ...], e: int, dtype: torch.dtype, device,
                 scale: float = 1.0) -> torch.Tensor:
    """Like `index_lut`, but the entry is the selected point's fraction times `scale` (in `dtype`)."""
    def build():
        grid = np.arange((1 << e) + 1)
        return np.concatenate([np.asarray(f, dtype=np.float64)[np.searchsorted(
            np.array([m * 2.0 ** e for m in midpoints(f)]), grid, side="left")] for f in fracs]) * scale
    return _lut(("fraction", fracs, e, scale), build, dtype, device)


def threshold_index(t: torch.Tensor, frac: tuple[float, ...]) -> torch.Tensor:
    """Count of midpoints between consecutive `frac` points that t exceeds (uint8); the definition
    that `cells` + `index_lut` compute with one lookup."""
    pos = torch.zeros(t.shape, dtype=torch.uint8, device=t.device)
    for m in midpoints(frac):  # loop over the 2^k - 1 thresholds, vectorised over values
        pos += (t > m).view(torch.uint8)
    return pos


def zero_bounds(z: torch.Tensor, frac: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode B: per block, t in (lower, upper] selects the zero point z instead of a bulk point.

    The zero sits before any bulk point equal to it; its lower threshold is the midpoint to the
    nearest bulk point below, its upper threshold the midpoint to the nearest one at or above.
    """
    f = torch.tensor(frac, dtype=z.dtype, device=z.device)
    j = torch.searchsorted(f, z)  # first point >= z
    inf = torch.tensor(float("inf"), dtype=z.dtype, device=z.device)
    below = torch.where(j > 0, f[(j - 1).clamp_(min=0)], -inf)
    above = torch.where(j < f.numel(), f[j.clamp(max=f.numel() - 1)], inf)
    return (z + below) / 2, (z + above) / 2
