"""Exit rules: where each input leaves, given every exit's logits (batched simulation).

The simulation is exact for accuracy and cost because exit heads and blocks are deterministic;
the runtime that really skips layers at batch size 1 lives with the exporter and Predictive Exit.
"""
from __future__ import annotations

import torch


def score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Higher means more confident, for every criterion."""
    if criterion == "confidence":
        return logits.softmax(-1).amax(-1)
    if criterion == "entropy":  # negative entropy so that 'higher is more confident' holds
        p = logits.softmax(-1)
        return (p * p.clamp_min(1e-12).log()).sum(-1)
    if criterion == "maxlogit":
        return logits.abs().amax(-1)
    raise ValueError(f"unknown exit criterion '{criterion}'")


def choose_exits(outs: list[torch.Tensor], criterion: str, threshold: float | list[float]) -> torch.Tensor:
    """Index of the output each sample leaves at: the first exit whose score reaches the threshold
    (for 'entropy', the threshold is a maximum entropy), else the final head (len(outs)-1)."""
    n_exits = len(outs) - 1
    n = outs[-1].shape[0]
    chosen = torch.full((n,), n_exits, dtype=torch.long)
    pending = torch.ones(n, dtype=torch.bool)
    for k in range(n_exits):
        t = threshold[k] if isinstance(threshold, (list, tuple)) else threshold
        s = score(outs[k], criterion)
        fire = (-s <= t) if criterion == "entropy" else (s >= t)
        take = pending & fire
        chosen[take] = k
        pending &= ~take
    return chosen


def gather_outputs(outs: list[torch.Tensor], chosen: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack(outs, 0)  # (E+1, N, ...)
    return stacked[chosen, torch.arange(chosen.shape[0])]
