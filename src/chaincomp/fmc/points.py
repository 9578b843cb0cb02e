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
midpoints are constants of the table; the decoder never needs them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

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


def max_gap(scale: int, n: int) -> float:
    """Largest distance between consecutive fractions: the error is at most half of it times range."""
    f = fractions(scale, n)
    return max((b - a for a, b in zip(f, f[1:])), default=0.0)


def bits_for_scales(n_scales: int) -> int:
    """Per-block scale flag width: 0 for one scale, 1 for two, 2 for three or four."""
    return math.ceil(math.log2(n_scales)) if n_scales > 1 else 0


def table(scale_ids: tuple[int, ...], k: int, dtype) -> np.ndarray:
    """(2 * n_scales, 2^k) fractions per (mode, scale) combo: rows [A scales..., B scales...].

    Row B's column 0 is a placeholder: index 0 of mode B is the exact zero.
    """
    p = 1 << k
    rows = [fractions(s, p) for s in scale_ids]
    rows += [(0.0,) + fractions(s, p - 1) if p > 2 else (0.0,) * p for s in scale_ids]
    return np.array(rows, dtype=dtype)


def threshold_index(t: np.ndarray, frac: tuple[float, ...]) -> np.ndarray:
    """Count of midpoints between consecutive `frac` points that t exceeds (uint8)."""
    pos = np.zeros(t.shape, np.uint8)
    for a, b in zip(frac, frac[1:]):  # loop over the 2^k - 1 thresholds, vectorised over values
        np.add(pos, t > (a + b) / 2, out=pos, casting="unsafe")
    return pos


def zero_cell(t: np.ndarray, z: np.ndarray, frac: tuple[float, ...]) -> np.ndarray:
    """Mode B: True where t falls between the midpoints that bound the zero point z (per block).

    The zero sits before any bulk point equal to it; its lower threshold is the midpoint to the
    nearest bulk point below, its upper threshold the midpoint to the nearest one at or above.
    """
    f = np.asarray(frac, dtype=t.dtype)
    j = np.searchsorted(f, z, side="left")
    below = np.where(j > 0, f[np.maximum(j - 1, 0)], -np.inf)
    above = np.where(j < f.size, f[np.minimum(j, f.size - 1)], np.inf)
    lower = (z + below) / 2
    upper = (z + above) / 2
    return (t > lower[:, None]) & (t <= upper[:, None])
