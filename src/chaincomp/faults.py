"""Named points where a test may kill the process (SIGKILL), to prove crash safety, or poison the
training loss with NaN, to prove that divergence is caught through the command line.

Set CHAINCOMP_KILL_AT=name:n to kill at the n-th time `point(name)` is reached, and
CHAINCOMP_NAN_AT=name:n to make the n-th `nan(name)` true. Unset (always, in normal use), each
costs one dictionary lookup.

A value not of the form `name` or `name:n` is a one-line UserError naming the variable and the
form (`check_env` tells at start, before any work; `point`/`nan` tell when first reached).
"""
from __future__ import annotations

import os
import re
import signal

from .errors import UserError, one_line

VARIABLES = ("CHAINCOMP_KILL_AT", "CHAINCOMP_NAN_AT")
_SPEC = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,63})(?::([0-9]{1,9}))?")
_counts: dict[tuple[str, str], int] = {}
_parsed: dict[tuple[str, str], tuple[str, int]] = {}


def parse(var: str, spec: str) -> tuple[str, int]:
    """(name, n) of a fault spec `name[:n]`; anything else is a UserError naming `var` and the form."""
    key = (var, spec)
    if key not in _parsed:
        m = _SPEC.fullmatch(spec.strip())
        n = int(m.group(2) or 1) if m else 0
        if not m or n < 1:
            raise UserError(f"{var}={one_line(repr(spec), 60)}: not a fault point; the form is name:n, e.g. "
                            f"train_step:3 (a point name, and n >= 1 the pass to act on); unset it for a normal run")
        _parsed[key] = (m.group(1), n)
    return _parsed[key]


def check_env() -> None:
    """Refuse a garbage value in the fault-injection variables before any work starts (call at startup)."""
    for var in VARIABLES:
        spec = os.environ.get(var)
        if spec:
            parse(var, spec)


def _reached(var: str, name: str) -> bool:
    """Count this pass through `name`; true on the n-th one when ${var} is `name:n` (n defaults to 1)."""
    spec = os.environ.get(var)
    if not spec:
        return False
    target, n = parse(var, spec)
    key = (var, name)
    _counts[key] = _counts.get(key, 0) + 1
    return target == name and _counts[key] == n


def point(name: str) -> None:
    if _reached("CHAINCOMP_KILL_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def nan(name: str) -> bool:
    return _reached("CHAINCOMP_NAN_AT", name)
