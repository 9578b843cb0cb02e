"""Named points where a test may kill the process (SIGKILL), to prove crash safety.

Set CHAINCOMP_KILL_AT=name:n to kill at the n-th time `point(name)` is reached. Unset (always, in
normal use), a point costs one dictionary lookup.
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
