"""Where feature maps are coded in a model and the hooks that code them: the mechanism behind the fmc
stage and the fmc study. Points are found by tracing the model (module calls and map shapes), or named.

The transform `{"type": "fmc", "points": {name: block}, "codec": {...}}` is what a checkpoint records;
a point's block may carry a 4th entry, that map's index bits (`point_codec`: finer points on the maps
where a rate allocation measured it to help);
`attach` replays it (replacing earlier fmc hooks on the model, so maps are never coded twice).
"""
from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from ..energy.cost import run_hooked_once
from ..errors import UserError
from .codec import PRESETS, preset_block
from .hooks import ACTIVATIONS, attach_codec, default_points

MAP_ACTIVATIONS = ACTIVATIONS + (nn.Tanh, nn.Sigmoid)
WEIGHTED = (nn.Conv2d, nn.Linear)


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


def point_codec(spec, codec: dict) -> tuple[tuple[int, int, int], dict]:
    """(block, codec keywords) of one point: [c, h, w] uses `codec`; [c, h, w, k] overrides its index bits."""
    spec = list(spec)
    return tuple(spec[:3]), ({**codec, "index_bits": int(spec[3])} if len(spec) == 4 else dict(codec))


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
        block, codec = point_codec(self.points[p], self.codec)
        self.handles[p] = attach_codec(model, [p], block=block, **codec)
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
                # the tensor itself, not its id: a freed input's id may be reused by a later coded map
                hooks.append(m.register_forward_pre_hook(lambda _m, inp: inputs.append(inp[0])))
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
        for i, t in enumerate(inputs):
            if id(t) in coded and coded[id(t)][0] is t:
                prof.layers[i].in_bytes = coded[id(t)][1]
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


def resolve_points(model: nn.Module, sample: torch.Tensor, points: str | list[str], block: tuple[int, int, int],
                   fit: bool = True, preset: str | None = None) -> dict[str, list[int]]:
    """Module name -> block for every coded map: `points` is "auto" or module names. With a codec preset
    (e.g. "paper"), each map gets the preset's block shape that tiles it (`codec.preset_block`)."""
    events, shapes = _trace(model, sample)
    names = auto_points(model, events, shapes) if points == "auto" else list(points)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not n]
    if missing:
        raise UserError(f"fmc.points: no module named {missing}; e.g. {sorted(n for n in modules if n)[:12]}")
    if not names:
        raise UserError("fmc.points: no 4-D feature map found to code; name the layers in `points`")
    if preset is not None:
        p = PRESETS[preset]
        return {n: list(preset_block(p, shapes[n]) if len(shapes.get(n, ())) == 4 else p.block) for n in names}
    return {n: fit_block(block, shapes.get(n, ())) if fit else list(block) for n in names}
