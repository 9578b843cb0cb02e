"""Pick the exit threshold on validation data: the cheapest one that keeps accuracy within
`max_drop` points of the network's own final head (the Chain-of-Compression exit rule)."""
from __future__ import annotations

import torch

from ..data.base import TaskData
from .model import ExitNetwork
from .rules import choose_exits, gather_outputs

GRID = {
    "confidence": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999],
    "entropy": [2.0, 1.5, 1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.02, 0.01, 0.001, 0.0001],
}


def calibrate_rule(model: ExitNetwork, data: TaskData, criterion: str, max_drop: float,
                   costs: list[float]) -> dict:
    """Return {'criterion', 'threshold', 'max_drop'} minimising mean cost under the accuracy bound."""
    from ..train import outputs_and_targets

    outs, ys = outputs_and_targets(model, data.val, device=data.device)   # answers come back to the CPU
    outs = [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]
    y = torch.cat(ys)
    final_acc = float((outs[-1].argmax(-1) == y).float().mean() * 100)
    cost = torch.tensor(costs, dtype=torch.float64)
    best = {"criterion": criterion, "threshold": GRID[criterion][-1], "max_drop": max_drop}
    best_cost = float("inf")
    for t in GRID[criterion]:
        chosen = choose_exits(outs, criterion, t)
        acc = float((gather_outputs(outs, chosen).argmax(-1) == y).float().mean() * 100)
        c = float(cost[chosen].mean())
        if acc >= final_acc - max_drop and c < best_cost:
            best, best_cost = {"criterion": criterion, "threshold": t, "max_drop": max_drop}, c
    return best
