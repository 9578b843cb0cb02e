"""Early exit: exit heads after chosen blocks, trained jointly on the sum of every output's
cross-entropy; an input leaves at the first exit whose confidence (max softmax) or entropy passes
a threshold calibrated on validation data to stay within `max_drop` points of the final head.

Recipe:
    - technique: early_exit
      points: all            # or block indices, e.g. [2, 5, 8]
      head: pool             # pool | bof (Predictive Exit's bag-of-features head)
      criterion: confidence  # confidence | entropy
      threshold: null        # null: calibrate; a number fixes it
      max_drop: 0.5          # points of top-1 the exits may cost on validation data
      epochs: 10
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..arch import record
from ..errors import UserError
from ..exits.calibrate import calibrate_rule
from ..exits.model import ExitNetwork, attach_exits, resolve_points
from ..ledger import exit_costs
from ..qmodules import quantize_like
from .base import Context, Stage, StageConfig
from .registry import register


class EarlyExitConfig(StageConfig):
    technique: Literal["early_exit"] = "early_exit"
    points: Literal["all"] | list[int | str] = Field(
        "all", max_length=1024, description="block indices or module paths (imported models); all: every block "
                                            "(zoo) or the points found on the traced graph (imported)")
    head: Literal["pool", "bof"] = "pool"
    criterion: Literal["confidence", "entropy"] = "confidence"
    threshold: float | None = Field(None, ge=0, le=100)
    max_drop: float = Field(0.5, ge=0, le=100)
    freeze_backbone: bool = False
    epochs: int = Field(10, ge=0, le=100_000)


@register
class EarlyExit(Stage):
    technique = "early_exit"
    letter = "E"
    Config = EarlyExitConfig
    studied = True
    rank = 3
    transform = "exits"

    @staticmethod
    def settle(model: nn.Module, data) -> nn.Module:
        """After any stage changes an exit network, recalibrate a calibrated exit rule, so that the
        threshold keeps meaning 'within max_drop of the final head' whatever came before."""
        if isinstance(model, ExitNetwork) and "max_drop" in model.exit_rule:
            costs = [c["bitops"] for c in exit_costs(model, data.sample_input())]
            model.exit_rule = calibrate_rule(model, data, model.exit_rule["criterion"], model.exit_rule["max_drop"],
                                             costs)
        return model

    @staticmethod
    def replay(model: nn.Module, t: dict, sample) -> nn.Module:
        old_exits = set(model.exits.keys()) if isinstance(model, ExitNetwork) else set()
        net = attach_exits(model, t["points"], t["head"], t["num_classes"], sample, t.get("options"))
        for k, head in net.exits.items():
            if k not in old_exits:
                quantize_like(head, model)  # a quantized model keeps its bits in new exit heads
        record(net, t)
        return net

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        c: EarlyExitConfig = self.config
        data = ctx.data
        if data.task != "classification":
            raise UserError(f"chain.{ctx.stage_index}: early_exit needs a classification task, not {data.task}")
        ints = [p for p in c.points if isinstance(p, int)] if isinstance(c.points, list) else []
        if any(p >= len(model.blocks) - 1 or p < -(len(model.blocks)) for p in ints):
            raise UserError(f"chain.{ctx.stage_index}.points: block indices must be below {len(model.blocks) - 1}")
        points = c.points
        if hasattr(model, "auto_exits"):   # an imported model: record the blocks, found once on its graph
            points = resolve_points(model, c.points, f"chain.{ctx.stage_index}.points")
            if not points:
                raise UserError(f"chain.{ctx.stage_index}.points: the traced model has no exit point before its "
                                "last block; name module paths that end blocks")
        t = {"type": "exits", "points": points, "head": c.head, "num_classes": data.num_classes}
        net: ExitNetwork = self.replay(model, t, data.sample_input())
        params = None
        if c.freeze_backbone:
            params = list(net.exits.parameters())
        ctx.fit(net, c.fit_config(), params=params)
        if c.threshold is None:
            costs = [x["bitops"] for x in exit_costs(net, data.sample_input())]
            net.exit_rule = calibrate_rule(net, data, c.criterion, c.max_drop, costs)
        else:
            net.exit_rule = {"criterion": c.criterion, "threshold": c.threshold}
        ctx.notes["exit_rule"] = dict(net.exit_rule)
        return net
