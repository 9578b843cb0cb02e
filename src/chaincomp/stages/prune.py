"""Structured channel pruning that really removes channels, through Torch-Pruning's dependency
graph (residual connections and exit heads stay consistent). Output classifiers (final head and
every exit head's last layer) are never pruned. Iterative: `steps` rounds of pruning, each
followed by fine-tuning, so the result is a plain, smaller nn.Module.

Recipe:
    - technique: prune
      ratio: 0.5             # share of channels removed (per layer, or of the whole net if global)
      importance: l2         # l1 | l2 | taylor | lamp
      global: true
      steps: 4
      epochs: 8              # total fine-tuning, spread over the steps
      round_to: 8            # optional: keep channel counts multiples of 8
      ignore: ["blocks.[0-3]*"]   # optional: layer-name globs never pruned (nor what they are coupled to)

`round_to` is for deployment: ONNX Runtime's int8 and float convolutions work on channel blocks
(8/16 wide), so 9 or 18 channels run no faster than 16 or 24 (see benchmarks/deploy_results.md).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..pruning import make_pruner, prune_step
from ..train import as_list, multi_loss
from .base import Context, Stage, StageConfig
from .registry import register


class PruneConfig(StageConfig):
    technique: Literal["prune"] = "prune"
    ratio: float = Field(0.5, ge=0, lt=1, description="share of channels to remove")
    importance: Literal["l1", "l2", "taylor", "lamp"] = "l2"
    global_: bool = Field(True, alias="global")
    steps: int = Field(4, ge=1, le=1000)
    max_layer_ratio: float = Field(0.9, gt=0, le=1, description="no layer loses more than this share")
    round_to: int | None = Field(None, ge=1, le=1024, description="channel counts stay multiples of this "
                                 "(blocked CPU kernels); none: any count")
    ignore: list[str] = Field(default_factory=list, max_length=256,
                              description="layer-name globs never pruned, with the channels coupled to them "
                                          "(e.g. full-resolution layers, where narrow kernels run slower)")

    model_config = {**StageConfig.model_config, "populate_by_name": True}


@register
class Prune(Stage):
    technique = "prune"
    letter = "P"
    Config = PruneConfig
    studied = True
    rank = 1

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        c: PruneConfig = self.config
        if c.ratio == 0:
            return model
        data = ctx.data
        example = data.sample_input(2)
        pruner = make_pruner(model, example, importance=c.importance, ratio=c.ratio, global_pruning=c.global_,
                             steps=c.steps, max_layer_ratio=c.max_layer_ratio, round_to=c.round_to, ignore=c.ignore)
        per_step = [c.epochs // c.steps + (1 if i < c.epochs % c.steps else 0) for i in range(c.steps)]
        for i in range(c.steps):
            if c.importance == "taylor":
                x, y = next(data.train.batches(c.batch_size, shuffle=True,
                                               generator=torch.Generator().manual_seed(ctx.seed + i)))
                model.zero_grad()
                multi_loss(data, as_list(model(x)), y).backward()
            prune_step(pruner, model)
            model.zero_grad(set_to_none=True)
            ctx.fit(model, c.fit_config(per_step[i]))
        return model
