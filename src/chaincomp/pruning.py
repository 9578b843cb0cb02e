"""Channel pruning through Torch-Pruning's dependency graph: the one place MetaPruner is set up.

Torch-Pruning finds the coupled channels (residual adds, concatenations, depthwise groups); this module
adds what a chain needs around it: which layers must keep their outputs (classifiers), layers the user
protects by name, and pruning a fresh model to given per-layer shares (a distilled student).
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch
import torch_pruning as tp
from torch import nn

from .errors import UserError
from .qmodules import drop_out_channels, step_sizes
from .train import as_list

WEIGHTED = (nn.Conv2d, nn.Linear)


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED)}


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv/linear layers whose outputs reach a model output through no other weighted layer (the
    classifier of the final head and of every exit head), found on the traced autograd graph rather
    than from attribute names, so any model's classifiers keep their classes."""
    made: dict = {}

    def hook(m, _i, o) -> None:   # returns None: a forward hook's return value would replace the output
        if isinstance(o, torch.Tensor) and o.grad_fn is not None:
            made.setdefault(o.grad_fn, m)
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, WEIGHTED)]
    try:
        with torch.enable_grad():
            outs = as_list(model(example[:2].detach().clone().requires_grad_(True)))
    finally:
        for h in hooks:
            h.remove()
    found, seen = [], set()
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if made[fn] not in found:
                found.append(made[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def ignored(model: nn.Module, globs: list[str]) -> list[nn.Module]:
    """Conv/linear layers whose names match a glob; a glob that matches none is a recipe mistake."""
    layers = weighted_layers(model)
    for g in globs:
        if not any(fnmatchcase(n, g) for n in layers):
            raise UserError(f"prune.ignore: '{g}' matches no conv/linear layer; e.g. {sorted(layers)[:6]}")
    return [m for n, m in layers.items() if any(fnmatchcase(n, g) for g in globs)]


def importance_of(name: str):
    """Torch-Pruning's importance criterion for a recipe name (l1 | l2 | taylor | lamp)."""
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def sum_outputs(out):
    """One scalar from any model output (a tensor or an exit network's list) for the dependency trace."""
    return sum(o.sum() for o in as_list(out))


def make_pruner(model: nn.Module, example: torch.Tensor, *, importance: str = "l2", ratio: float = 0.5,
                global_pruning: bool = True, steps: int = 1, max_layer_ratio: float = 1.0, round_to: int | None = None,
                ignore: list[str] = (), ratios: dict[nn.Module, float] | None = None) -> tp.pruner.MetaPruner:
    """A MetaPruner that never prunes the model's outputs; `ratios` prunes given layers by given shares."""
    model.eval()
    kw = dict(pruning_ratio_dict=ratios) if ratios else {}
    keep = output_layers(model, example) + ignored(model, list(ignore))
    try:
        return tp.pruner.MetaPruner(
            model, example, importance=importance_of(importance), global_pruning=global_pruning, pruning_ratio=ratio,
            iterative_steps=steps, ignored_layers=keep, max_pruning_ratio=max_layer_ratio, round_to=round_to,
            output_transform=sum_outputs, **kw)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"prune: Torch-Pruning cannot build the dependency graph of {type(model).__name__} "
                        f"({type(e).__name__}: {first})") from None


def prune_step(pruner: tp.pruner.MetaPruner, model: nn.Module) -> None:
    """One pruning step. Learned per-channel step sizes (LSQ) are no weight Torch-Pruning knows: each
    group is pruned here, and those steps lose the output channels their layer loses."""
    if not step_sizes(model):
        pruner.step()
        return
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if pruner.DG.is_out_channel_pruning_fn(dep.handler):
                drop_out_channels(dep.target.module, [getattr(i, "idx", i) for i in idxs])
        group.prune()


def prune_to_shares(model: nn.Module, kept: dict[str, float], example: torch.Tensor) -> None:
    """Keep `kept[name]` of each named layer's output channels, couplings kept consistent. Which channels go
    does not matter for a freshly initialised model (a distilled student that must match a pruned teacher)."""
    layers = weighted_layers(model)
    ratios = {layers[n]: 1 - k for n, k in kept.items() if n in layers}
    if ratios:
        prune_step(make_pruner(model, example[:2], ratio=0.0, global_pruning=False, ratios=ratios), model)
