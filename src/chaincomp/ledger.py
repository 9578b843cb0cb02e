"""The figures of one model, read from the model itself: metric, BitOps, MACs, parameters, bytes.

For an exit network BitOps and MACs are the mean, over the evaluation set, of what actually ran
for each input: the blocks up to its exit and every exit head it passed (the final head if none
fired).

`dram_bytes` is the modelled DRAM traffic of one inference: every conv/linear layer reads its
weights once and its input and writes its output (activations at their bits, outputs at 32 bits);
maps coded by an fmc stage count at the length of their real streams (`fmc.maps.FmcHooks.profile`).
"""
from __future__ import annotations

import torch
from torch import nn

from .data.base import TaskData
from .energy.cost import count_params, profile_model, size_bytes
from .exits.model import ExitNetwork
from .train import evaluate


def _fmc(model: nn.Module):
    """The feature-map codec hooks of an fmc stage, if any submodule carries them (re-attached to any
    point layer a later stage replaced)."""
    fmc = next((m.chaincomp_fmc for m in model.modules() if hasattr(m, "chaincomp_fmc")), None)
    if fmc is not None:
        fmc.sync(model)
    return fmc


def cost_profile(model: nn.Module, sample: torch.Tensor, act_bytes_hook=None):
    """`profile_model`, or the fmc hooks' profile (coded maps at their counted bytes) when present."""
    fmc = None if act_bytes_hook else _fmc(model)
    return fmc.profile(model, sample) if fmc is not None else profile_model(model, sample, act_bytes_hook)


def exit_costs(model: ExitNetwork, sample: torch.Tensor, act_bytes_hook=None) -> list[dict]:
    """Cost of leaving at each output (exits in order, final last), exit heads passed included."""
    prof = cost_profile(model, sample, act_bytes_hook)
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
    fmc = _fmc(model)
    if fmc is not None:
        fmc.reset()  # so dram_bytes uses the compression counted on this split
    res = evaluate(model, data, split)
    sample = data.sample_input()
    out = {"metric": round(res.metric, 4), "params": count_params(model), "size_bytes": size_bytes(model)}
    if fmc is not None:  # raw bytes / stream bytes of the coded maps over the evaluated split (before
        out["fmc_ratio"] = round(fmc.total()["ratio"], 4)  # the cost profile adds its own sample)
    if isinstance(model, ExitNetwork):
        costs = exit_costs(model, sample)
        idx = res.exit_index
        for key in ("bitops", "macs", "dram_bytes"):
            per = torch.tensor([float(c[key]) for c in costs], dtype=torch.float64)
            out[key] = float(per[idx].mean())
        counts = torch.bincount(idx, minlength=len(costs)).tolist()
        out["exit_histogram"] = counts
        out["exit_rule"] = dict(model.exit_rule)
    else:
        t = cost_profile(model, sample).total()
        out["bitops"], out["macs"], out["dram_bytes"] = float(t["bitops"]), float(t["macs"]), float(t["dram_bytes"])
    return out
