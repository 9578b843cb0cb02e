"""Feature-map compression (ASC, Yao & Chang 2024) as a chain stage: encode -> decode hooks on the
maps a layer-by-layer accelerator would move to DRAM, so the ledger's metric is measured on
decoded maps and its `dram_bytes` counts those maps at the size of their real streams.

Why a transform and not weights: the codec has no parameters. The stage records
`{"type": "fmc", "points": {name: block}, "codec": {...}}` and `Fmc.replay` replays it,
so a checkpoint rebuild (or a distilled student) gets the same hooks back. A later fmc stage
replaces the earlier hooks instead of coding the maps twice. No training unless `epochs` > 0
(then straight-through: gradients flow as if the codec were the identity).

`points: auto` (zoo models): every block's output (what the next block reads) plus activations
inside a block that a later conv of the same block reads (ResNet relu1, EDSR's ReLU, SegNet's
first encoder conv); other models: `chaincomp.fmc.default_points`. With `fit_block` a block
taller or wider than a map is cut to the map and the freed values go to more channels
((1, 8, 8) on a 4x4 map -> (4, 4, 4)), so small maps are not coded mostly as padding.

Recipe:
    - technique: fmc
      points: auto           # or module names, e.g. ["blocks.0", "blocks.1.relu1"]
      bits_in: 16            # 16 | 8: the precision maps are moved at (8: int8, one scale per map)
      block: [1, 8, 8]       # channels, height, width per block
      index_bits: 3
      mode: vbr              # cbr | vbr
      method: asc            # asc | minmax | single_mode (the baselines)
      epochs: 0
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_serializer, model_validator
from torch import nn

from ..arch import record
from ..fmc import DEFAULT_BLOCK, DEFAULT_INDEX_BITS, DEFAULT_SCALES
from ..fmc.maps import attach, find_hooks, resolve_points
from .base import Context, Stage, StageConfig
from .registry import register


def _block(v: tuple[int, int, int]) -> tuple[int, int, int]:
    if not all(1 <= b <= 64 for b in v) or math.prod(v) > 1024:
        raise ValueError("block: 3 sizes (channels, height, width) in 1..64, at most 1024 values")
    return v


# A codec block (channels, height, width): one type for the stage and the fmc study, so `check` refuses
# what the command would.
CodecBlock = Annotated[tuple[int, int, int], AfterValidator(_block)]
Endpoints = Literal["range", "fit"]
ENDPOINTS_HELP = "range: each block's min and max; fit: least squares (lower error at the same bits)"


def refuse_fit_with_preset(preset: str | None, endpoints: str) -> None:
    """A preset signals the scale in its endpoints' parity: they cannot be fitted (recipes say so at check time)."""
    if preset and endpoints == "fit":
        raise ValueError(f"preset {preset} signals the scale in its endpoints; leave out endpoints: fit")


def without_default_endpoints(d: dict) -> dict:
    """A dumped codec section without `endpoints: range`, so recipes written before the field keep their digest."""
    return {k: v for k, v in d.items() if k != "endpoints" or v != "range"}


def endpoints_kwargs(endpoints: str) -> dict:
    """The codec keyword for `endpoints`, only when it is not the default (codec dicts stay as they were)."""
    return {"endpoints": "fit"} if endpoints == "fit" else {}


class FmcConfig(StageConfig):
    technique: Literal["fmc"] = "fmc"
    epochs: int = Field(0, ge=0, le=100_000, description="straight-through fine-tuning with the codec in place")
    points: Literal["auto"] | list[str] = Field("auto", description="module names whose outputs are coded")
    bits_in: Literal[16, 8] = 16
    block: CodecBlock = DEFAULT_BLOCK
    fit_block: bool = Field(True, description="cut the block to small maps, giving the freed values to channels")
    index_bits: int = Field(DEFAULT_INDEX_BITS, ge=1, le=4)
    mode: Literal["cbr", "vbr"] = "vbr"
    method: Literal["asc", "minmax", "single_mode"] = "asc"
    scales: list[Literal["linear", "log", "hlog", "rlog", "rhlog"]] = Field(list(DEFAULT_SCALES), min_length=1,
                                                                           max_length=4)
    lr: float = Field(0.001, gt=0, le=10)
    preset: Literal["paper"] | None = Field(None, description="paper: the paper's operating point (16-value "
                                            "blocks, 2-bit indices, mode from the endpoint order, no scale flag; "
                                            "exactly 4x at cbr on 16-bit maps); fixes block, index_bits, method")

    endpoints: Endpoints = Field("range", description=ENDPOINTS_HELP)

    @model_validator(mode="after")
    def _preset_fixes(self) -> "FmcConfig":
        fixed = {"block", "index_bits", "method"} & self.model_fields_set
        if self.preset and fixed:
            raise ValueError(f"preset {self.preset} fixes {', '.join(sorted(fixed))}; leave them out")
        refuse_fit_with_preset(self.preset, self.endpoints)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return without_default_endpoints(handler(self))

    def codec(self) -> dict:
        if self.preset:     # the preset's own rate unless `mode` was given
            mode = self.mode if "mode" in self.model_fields_set else "cbr"
            return {"bits_in": self.bits_in, "mode": mode, "preset": self.preset, "scales": list(self.scales)}
        return {"bits_in": self.bits_in, "index_bits": self.index_bits, "mode": self.mode, "method": self.method,
                "scales": list(self.scales)} | endpoints_kwargs(self.endpoints)


@register
class Fmc(Stage):
    technique = "fmc"
    letter = "F"
    Config = FmcConfig
    rank = 4
    transform = "fmc"

    @staticmethod
    def replay(model: nn.Module, t: dict, sample) -> nn.Module:
        """Codec hooks have no weights: the recorded points and codec are all a checkpoint needs."""
        attach(model, t)
        record(model, t)
        return model

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        c: FmcConfig = self.config
        sample = ctx.data.sample_input()
        t = {"type": "fmc", "points": resolve_points(model, sample, c.points, c.block, c.fit_block, c.preset), "codec": c.codec()}
        model = self.replay(model, t, sample)
        if c.epochs:
            ctx.fit(model, c.fit_config())
        find_hooks(model).reset()
        ctx.notes["fmc_points"] = t["points"]
        return model
