"""Reusable temporaries for the codec's per-value passes.

Why: every fresh tensor of a map's size is fresh memory from the OS, and its first touch costs a
page fault per 4 KiB page; on the benchmark VM that was about 3000 faults and a third of an
encode's CPU time. Temporaries with a name are kept per thread and reused (grown when a larger
map comes), so a steady stream of maps runs without faulting. Only temporaries live here: what a
function returns is always fresh memory.
"""
from __future__ import annotations

import math
import threading

import torch

MAX_BYTES = 1 << 27  # larger temporaries are not kept
_LOCAL = threading.local()


def scratch(name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised tensor of `shape` that may share memory with the last one of this name
    (and dtype and device) on this thread; the caller must be done with that one."""
    numel = math.prod(shape)
    if numel * torch.empty((), dtype=dtype).element_size() > MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = {}
    key = (name, dtype, str(device))
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        buf = pool[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def release() -> None:
    """Drop this thread's kept temporaries."""
    _LOCAL.pool = {}
