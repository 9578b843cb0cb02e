"""Feature-map compression (ASC, Yao & Chang 2024) as a chain stage: encode -> decode hooks on the
maps a layer-by-layer accelerator would move to DRAM, so the ledger's metric is measured on
decoded maps and its `dram_bytes` counts those maps at the size of their real streams.

Why a transform and not weights: the codec has no parameters. The stage records
`{"type": "fmc", "points": {name: block}, "codec": {...}}` and `arch.apply_transform` replays it,
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
import weakref
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..energy.cost import run_hooked_once
from ..errors import UserError
from ..fmc import DEFAULT_BLOCK, DEFAULT_INDEX_BITS, DEFAULT_SCALES, attach_codec, default_points
from ..fmc.hooks import ACTIVATIONS
from .base import Context, Stage, StageConfig

MAP_ACTIVATIONS = ACTIVATIONS + (nn.Tanh, nn.Sigmoid)
WEIGHTED = (nn.Conv2d, nn.Linear)


class FmcConfig(StageConfig):
    technique: Literal["fmc"] = "fmc"
    epochs: int = Field(0, ge=0, le=100_000, description="straight-through fine-tuning with the codec in place")
    points: Literal["auto"] | list[str] = Field("auto", description="module names whose outputs are coded")
    bits_in: Literal[16, 8] = 16
    block: tuple[int, int, int] = DEFAULT_BLOCK
    fit_block: bool = Field(True, description="cut the block to small maps, giving the freed values to channels")
    index_bits: int = Field(DEFAULT_INDEX_BITS, ge=1, le=4)
    mode: Literal["cbr", "vbr"] = "vbr"
    method: Literal["asc", "minmax", "single_mode"] = "asc"
    scales: list[Literal["linear", "log", "hlog", "rlog", "rhlog"]] = Field(list(DEFAULT_SCALES), min_length=1,
                                                                           max_length=4)
    lr: float = Field(0.001, gt=0, le=10)

    @field_validator("block")
    @classmethod
    def _block(cls, v):
        if not all(1 <= b <= 64 for b in v) or math.prod(v) > 1024:
            raise ValueError("block: 3 sizes (channels, height, width) in 1..64, at most 1024 values")
        return v

    def codec(self) -> dict:
        return {"bits_in": self.bits_in, "index_bits": self.index_bits, "mode": self.mode, "method": self.method,
                "scales": list(self.scales)}


def _trace(model: nn.Module, sample: torch.Tensor) -> tuple[list[tuple[str, str]], dict[str, tuple]]:
    """One eval forward: the order in which activations finish and weighted layers start, and every
    module's output shape."""
    events, shapes, hooks = [], {}, []
    for name, m in model.named_modules():
        if not name:
            continue
        if isinstance(m, WEIGHTED):
            hooks.append(m.register_forward_pre_hook(lambda _m, _i, n=name: events.append(("w", n))))

        def post(_m, _i, out, n=name, act=isinstance(m, MAP_ACTIVATIONS)):
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            if act:
                events.append(("a", n))
        hooks.append(m.register_forward_hook(post))
    run_hooked_once(model, sample, hooks)
    return events, shapes


def auto_points(model: nn.Module, events: list, shapes: dict) -> list[str]:
    """Block outputs plus activations read by a later weighted layer of the same block (see module doc)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        return [p for p in default_points(model) if len(shapes.get(p, ())) == 4]
    points = []
    for i in range(len(blocks)):
        pre = f"blocks.{i}."
        mine = [(k, n) for k, n in events if n.startswith(pre)]
        for j, (kind, name) in enumerate(mine):
            if kind == "a" and any(k == "w" for k, _ in mine[j + 1:]) and len(shapes.get(name, ())) == 4:
                points.append(name)
        if len(shapes.get(f"blocks.{i}", ())) == 4:
            points.append(f"blocks.{i}")
    return points


def fit_block(block: tuple[int, int, int], shape: tuple) -> list[int]:
    """Shrink height/width to the map, spending the freed values on channels (at most the map's)."""
    bc, bh, bw = block
    if len(shape) != 4:
        return [bc, bh, bw]
    _, c, h, w = shape
    h2, w2 = min(bh, h), min(bw, w)
    return [max(1, min(c, bc * math.ceil(bh * bw / (h2 * w2)), 1024 // (h2 * w2))), h2, w2]


class FmcHooks:
    """The codec hooks of one model (one CodecHandle per point, since blocks may differ per point)."""

    def __init__(self, model: nn.Module, points: dict[str, list[int]], codec: dict):
        modules = dict(model.named_modules())
        missing = [p for p in points if p not in modules]
        if missing:
            raise UserError(f"fmc.points: no module named {missing}; e.g. {sorted(n for n in modules if n)[:12]}")
        self.points, self.codec = dict(points), dict(codec)
        self.handles, self.modules = {}, {}
        for p in points:
            self._attach(model, p, modules[p])
        model.chaincomp_fmc = self  # also on the root: found even if every point module is swapped
        self._root = weakref.ref(model)

    def _attach(self, model: nn.Module, p: str, module: nn.Module) -> None:
        self.handles[p] = attach_codec(model, [p], block=tuple(self.points[p]), **self.codec)
        self.modules[p] = module
        module.chaincomp_fmc = self

    def sync(self, model: nn.Module) -> None:
        """Re-attach to points whose module a later stage replaced (quantize swaps conv/linear layers,
        so a point that is itself such a layer would silently lose its codec)."""
        modules = dict(model.named_modules())
        for p, old in list(self.modules.items()):
            new = modules.get(p)
            if new is not None and new is not old:
                self.handles[p].remove()
                if getattr(old, "chaincomp_fmc", None) is self:
                    del old.chaincomp_fmc
                self._attach(model, p, new)

    def stats(self) -> dict[str, dict]:
        return {p: h.stats()[p] for p, h in self.handles.items()}

    def total(self) -> dict:
        raw = sum(h.total()["raw_bytes"] for h in self.handles.values())
        enc = sum(h.total()["encoded_bytes"] for h in self.handles.values())
        return {"raw_bytes": raw, "encoded_bytes": enc, "ratio": raw / enc if enc else float("nan")}

    def reset(self) -> None:
        for h in self.handles.values():
            h.reset()

    def remove(self) -> None:
        for h in self.handles.values():
            h.remove()
        for m in [*self.modules.values(), self._root()]:
            if getattr(m, "chaincomp_fmc", None) is self:
                del m.chaincomp_fmc

    def profile(self, model: nn.Module, sample: torch.Tensor):
        """`profile_model` with each coded map counted at its stream length: as the output of the
        last conv/linear that ran before the point (its producer) and as the input of every
        conv/linear that reads the decoded tensor itself; other reads (after a non-module op such
        as a residual add) stay raw, so the saving is a lower bound. The length is the map's raw
        bytes at `sample` divided by the point's ratio counted since the last `reset` (the ledger
        resets before evaluating, so: over the evaluated split); with no count yet, the stream of
        `sample` itself (a zero input codes far better than real data)."""
        from ..energy.cost import profile_model

        counted = {p: h.total() for p, h in self.handles.items()}  # fixed: the ratio to apply
        last = dict(counted)                                          # moves: to take each call's delta
        inputs, produced, coded, hooks = [], [], {}, []
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                hooks.append(m.register_forward_pre_hook(lambda _m, inp: inputs.append(id(inp[0]))))
        for p, m in self.modules.items():
            def after(_m, _i, out, p=p):
                now, c = self.handles[p].total(), counted[p]
                raw, enc = now["raw_bytes"] - last[p]["raw_bytes"], now["encoded_bytes"] - last[p]["encoded_bytes"]
                last[p] = now
                nbytes = raw * c["encoded_bytes"] / c["raw_bytes"] if c["raw_bytes"] else enc
                if raw and isinstance(out, torch.Tensor):
                    coded[id(out)] = (out, nbytes)  # the tensor is kept alive: its id cannot be reused
                    if inputs:
                        produced.append((len(inputs) - 1, nbytes))
            hooks.append(m.register_forward_hook(after))  # after the codec hook: sees the decoded map
        try:
            prof = profile_model(model, sample)
        finally:
            for h in hooks:
                h.remove()
        for i, nbytes in produced:
            prof.layers[i].out_bytes = nbytes
        for i, key in enumerate(inputs):
            if key in coded:
                prof.layers[i].in_bytes = coded[key][1]
        return prof


def find_hooks(model: nn.Module) -> FmcHooks | None:
    """The fmc hooks on any submodule of `model` (they survive wrapping into an exit network)."""
    return next((m.chaincomp_fmc for m in model.modules() if hasattr(m, "chaincomp_fmc")), None)


def attach(model: nn.Module, t: dict) -> FmcHooks:
    """Apply a recorded fmc transform (replacing earlier fmc hooks on this model)."""
    old = find_hooks(model)
    if old is not None:
        old.remove()
    return FmcHooks(model, t["points"], t["codec"])


def resolve_points(model: nn.Module, sample: torch.Tensor, c: FmcConfig) -> dict[str, list[int]]:
    events, shapes = _trace(model, sample)
    names = auto_points(model, events, shapes) if c.points == "auto" else list(c.points)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not n]
    if missing:
        raise UserError(f"fmc.points: no module named {missing}; e.g. {sorted(n for n in modules if n)[:12]}")
    if not names:
        raise UserError("fmc.points: no 4-D feature map found to code; name the layers in `points`")
    return {n: fit_block(c.block, shapes.get(n, ())) if c.fit_block else list(c.block) for n in names}


class Fmc(Stage):
    technique = "fmc"
    Config = FmcConfig

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from ..arch import apply_transform

        c: FmcConfig = self.config
        sample = ctx.data.sample_input()
        t = {"type": "fmc", "points": resolve_points(model, sample, c), "codec": c.codec()}
        model = apply_transform(model, t, sample)
        if c.epochs:
            ctx.fit(model, c.fit_config())
        find_hooks(model).reset()
        ctx.notes["fmc_points"] = t["points"]
        return model
