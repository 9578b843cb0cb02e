"""The table of block-coding methods, shared by the codec, the block coder and the baselines.

Why its own module: `codec` and `coder` need the table to encode and decode, and `baselines`
needs `codec` to offer its entry points; with the table here every import points one way
(baselines -> codec -> coder -> methods), with no late imports.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def scale_ids(method: Method, scales: tuple[str, ...]) -> tuple[int, ...]:
    """Scale ids the method uses (baselines ignore the caller's scales)."""
    return tuple(SCALE_ID[s] for s in (method.fixed_scales or scales))
