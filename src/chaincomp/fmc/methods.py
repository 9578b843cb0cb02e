"""The table of block-coding methods, shared by the codec, the block coder and the baselines.

Why its own module: `codec` and `coder` need the table to encode and decode, and `baselines`
needs `codec` to offer its entry points; with the table here every import points one way
(baselines -> codec -> coder -> methods), with no late imports.
"""
from __future__ import annotations

from dataclasses import dataclass

from .points import IMPLICIT_SCALES, SCALE_ID, bits_for_scales


@dataclass(frozen=True)
class Method:
    """What the block coder may choose from for one method."""

    name: str
    id: int
    mode_b: bool  # zero-reserved mode available
    fixed_scales: tuple[str, ...] | None  # None: scales come from the caller
    rounding: bool  # arithmetic rounding instead of midpoint thresholds
    implicit_scale: bool = False  # scale from the endpoints (points.implicit_scale), no flag bits


ASC = Method("asc", 0, True, None, False)
SINGLE_MODE = Method("single_mode", 1, False, ("linear",), False)
MINMAX = Method("minmax", 2, False, ("uniform",), True)
# ASC without the per-block scale flag: the switchable endpoint mode from the endpoint order and
# the linear/log scale from the endpoint values, so a block is 2 endpoints + indices and nothing else
ASC_IMPLICIT = Method("asc_implicit", 3, True, IMPLICIT_SCALES, False, implicit_scale=True)
METHODS = {m.name: m for m in (ASC, SINGLE_MODE, MINMAX, ASC_IMPLICIT)}
METHOD_BY_ID = {m.id: m for m in METHODS.values()}


def scale_ids(method: Method, scales: tuple[str, ...]) -> tuple[int, ...]:
    """Scale ids the method uses (baselines ignore the caller's scales)."""
    return tuple(SCALE_ID[s] for s in (method.fixed_scales or scales))


def flag_bits(method: Method, n_scales: int) -> int:
    """Per-block scale flag width in the stream (0 when the scale is implicit)."""
    return 0 if method.implicit_scale else bits_for_scales(n_scales)
