"""The figures of one model, read from the model itself: metric, BitOps, MACs, parameters, bytes.

For an exit network BitOps and MACs are the mean, over the evaluation set, of what actually ran
for each input: the blocks up to its exit and every exit head it passed (the final head if none
fired).
"""
from __future__ import annotations

import torch
from torch import nn

from .data.base import TaskData
from .energy.cost import count_params, profile_model, size_bytes
from .exits.model import ExitNetwork
from .train import evaluate


def exit_costs(model: ExitNetwork, sample: torch.Tensor, act_bytes_hook=None) -> list[dict]:
    """Cost of leaving at each output (exits in order, final last), exit heads passed included."""
    prof = profile_model(model, sample, act_bytes_hook)
    points = model.exit_points
    costs = []
    for j in range(len(points) + 1):
        last_block = points[j] if j < len(points) else len(model.blocks) - 1
        parts = [f"blocks.{i}." for i in range(last_block + 1)] + [f"exits.{p}." for p in points[:j + 1]]
        if j == len(points):
            parts.append("head.")
        c = {"macs": 0, "bitops": 0, "dram_bytes": 0.0}
        for prefix in parts:
            for k, v in prof.total(prefix).items():
                c[k] += v
        costs.append(c)
    return costs


def measure(model: nn.Module, data: TaskData, split: str = "test") -> dict:
    """Metric and cost of the model on a split (per sample)."""
    res = evaluate(model, data, split)
    sample = data.sample_input()
    out = {"metric": round(res.metric, 4), "params": count_params(model), "size_bytes": size_bytes(model)}
    if isinstance(model, ExitNetwork):
        costs = exit_costs(model, sample)
        idx = res.exit_index
        for key in ("bitops", "macs"):
            per = torch.tensor([float(c[key]) for c in costs], dtype=torch.float64)
            out[key] = float(per[idx].mean())
        counts = torch.bincount(idx, minlength=len(costs)).tolist()
        out["exit_histogram"] = counts
        out["exit_rule"] = dict(model.exit_rule)
    else:
        t = profile_model(model, sample).total()
        out["bitops"], out["macs"] = float(t["bitops"]), float(t["macs"])
    return out
