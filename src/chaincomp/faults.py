"""Named points where a test may kill the process (SIGKILL), to prove crash safety, or poison the
training loss with NaN, to prove that divergence is caught through the command line.

Set CHAINCOMP_KILL_AT=name:n to kill at the n-th time `point(name)` is reached, and
CHAINCOMP_NAN_AT=name:n to make the n-th `nan(name)` true. Unset (always, in normal use), each
costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_counts: dict[tuple[str, str], int] = {}


def _reached(var: str, name: str) -> bool:
    """Count this pass through `name`; true on the n-th one when ${var} is `name:n` (n defaults to 1)."""
    spec = os.environ.get(var)
    if not spec:
        return False
    key = (var, name)
    _counts[key] = _counts.get(key, 0) + 1
    target, _, n = spec.partition(":")
    return target == name and _counts[key] == int(n or 1)


def point(name: str) -> None:
    if _reached("CHAINCOMP_KILL_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def nan(name: str) -> bool:
    return _reached("CHAINCOMP_NAN_AT", name)
