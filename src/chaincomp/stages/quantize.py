"""Quantization: weights and activations at chosen bits (1 to 8, separately), per-channel weight
scales, first/last-layer and per-layer overrides; quantization-aware training with a
straight-through estimator (mode qat) or post-training calibration (mode ptq) by min-max,
percentile or MSE (outlier-aware) ranges. A pruned model stays pruned; exit heads are quantized too.

Recipe:
    - technique: quantize
      weight_bits: 4
      act_bits: 4
      first_last_bits: 8     # null: same bits everywhere
      mode: qat              # qat | ptq
      calibration: mse       # minmax | percentile | mse
      overrides: {"blocks.0.*": {weight_bits: 8}}
      epochs: 10
"""
from __future__ import annotations

from itertools import islice
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..arch import record, resync_fmc
from ..qmodules import QuantPlan, apply_quant, calibrate
from ..train import on_device
from .base import Context, Stage, StageConfig
from .registry import register


class LayerBits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_bits: int | None = Field(None, ge=1, le=8)
    act_bits: int | None = Field(None, ge=1, le=8)


class QuantizeConfig(StageConfig):
    technique: Literal["quantize"] = "quantize"
    weight_bits: int = Field(8, ge=1, le=8)
    act_bits: int = Field(8, ge=1, le=8)
    first_last_bits: int | None = Field(8, ge=1, le=8)
    per_channel: bool = True
    weight_scale: Literal["maxabs", "mse"] = "mse"
    mode: Literal["qat", "ptq"] = "qat"
    calibration: Literal["minmax", "percentile", "mse"] = "mse"
    calibration_batches: int = Field(8, ge=1, le=10_000)
    overrides: dict[str, LayerBits] = {}
    lr: float = Field(0.005, gt=0, le=10)


@register
class Quantize(Stage):
    technique = "quantize"
    letter = "Q"
    Config = QuantizeConfig
    studied = True
    rank = 2
    transform = "quantize"

    @staticmethod
    def replay(model: nn.Module, t: dict, sample) -> nn.Module:
        apply_quant(model, QuantPlan(**t["plan"]))
        resync_fmc(model)   # layers swapped for quantized ones lost their codec hooks
        record(model, t)
        return model

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        c: QuantizeConfig = self.config
        overrides = {k: {f: v for f, v in o.model_dump().items() if v is not None} for k, o in c.overrides.items()}
        plan = QuantPlan(c.weight_bits, c.act_bits, c.first_last_bits, c.per_channel, c.weight_scale, overrides)
        model = self.replay(model, {"type": "quantize", "plan": plan.to_dict()}, ctx.data.sample_input())
        dev = ctx.data.device
        batches = (x for x, _ in islice(ctx.data.train.batches(c.batch_size, device=dev), c.calibration_batches))
        with on_device(model, dev):
            calibrate(model, batches, c.calibration)
        if c.mode == "qat":
            ctx.fit(model, c.fit_config())
        return model
