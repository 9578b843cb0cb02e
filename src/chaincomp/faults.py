"""Named points where a test may kill the process (SIGKILL), to prove crash safety, or poison the
training loss with NaN, to prove that divergence is caught through the command line.

Set CHAINCOMP_KILL_AT=name:n to kill at the n-th time `point(name)` is reached, and
CHAINCOMP_NAN_AT=name:n to make the n-th `nan(name)` true. Unset (always, in normal use), each
costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("CHAINCOMP_KILL_AT")
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    target, _, n = spec.partition(":")
    if target == name and _counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_nan_counts: dict[str, int] = {}


def nan(name: str) -> bool:
    spec = os.environ.get("CHAINCOMP_NAN_AT")
    if not spec:
        return False
    _nan_counts[name] = _nan_counts.get(name, 0) + 1
    target, _, n = spec.partition(":")
    return target == name and _nan_counts[name] == int(n or 1)
