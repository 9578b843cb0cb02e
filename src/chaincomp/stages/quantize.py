"""Quantization: weights and activations at chosen bits (1 to 8, separately), per-channel weight
scales, first/last-layer and per-layer overrides; quantization-aware training with a
straight-through estimator (mode qat) or post-training calibration (mode ptq) by min-max,
percentile or MSE (outlier-aware) ranges. A pruned model stays pruned; exit heads are quantized too.
`scales: lsq` learns the step sizes in QAT (LSQ, Esser et al. 2020: weights per channel, activations per
layer, started from the calibrated scales), for 1-2-bit weights where fixed min-max/MSE scales lose accuracy.

Recipe:
    - technique: quantize
      weight_bits: 4
      act_bits: 4
      first_last_bits: 8     # null: same bits everywhere
      mode: qat              # qat | ptq
      calibration: mse       # minmax | percentile | mse
      scales: fixed          # fixed | lsq (learned step sizes; needs mode qat)
      overrides: {"blocks.0.*": {weight_bits: 8}}
      epochs: 10
"""
from __future__ import annotations

from itertools import islice
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from torch import nn

from ..arch import record, resync_fmc
from ..errors import UserError
from ..qmodules import QuantPlan, apply_quant, calibrate
from ..train import on_device
from .base import Context, Stage, StageConfig
from .registry import register


# Layers with weights that have no quantized twin here (Conv2d and Linear, depthwise/grouped included, have).
UNQUANTIZABLE = (nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding, nn.RNNBase, nn.MultiheadAttention)


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
    scales: Literal["fixed", "lsq"] = Field("fixed", description="fixed: weight scales from the weight, activation "
                                            "scales tracked; lsq: step sizes learned in QAT (Esser et al. 2020)")

    @model_validator(mode="after")
    def _lsq_learns(self) -> "QuantizeConfig":
        if self.scales == "lsq" and self.mode != "qat":
            raise ValueError("scales: lsq learns the step sizes during QAT; set mode: qat (or scales: fixed)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):   # recipes written before `scales` keep their digest
        d = handler(self)
        return {k: v for k, v in d.items() if k != "scales" or v != "fixed"}


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
        other = next(((n, m) for n, m in model.named_modules() if isinstance(m, UNQUANTIZABLE)
                      and not isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if other:   # never a silent skip: the ledger would count a float layer as if it had the plan's bits
            raise UserError(f"chain.{ctx.stage_index}: quantize has no quantized layer for module {other[0]} "
                            f"({type(other[1]).__name__}); only Conv2d and Linear layers are quantized")
        overrides = {k: {f: v for f, v in o.model_dump().items() if v is not None} for k, o in c.overrides.items()}
        plan = QuantPlan(c.weight_bits, c.act_bits, c.first_last_bits, c.per_channel, c.weight_scale, overrides,
                         c.scales)
        model = self.replay(model, {"type": "quantize", "plan": plan.to_dict()}, ctx.data.sample_input())
        dev = ctx.data.device
        batches = (x for x, _ in islice(ctx.data.train.batches(c.batch_size, device=dev), c.calibration_batches))
        with on_device(model, dev):
            calibrate(model, batches, c.calibration)
        if c.mode == "qat":
            ctx.fit(model, c.fit_config())
        return model
