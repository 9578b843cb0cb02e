"""How a model is rebuilt from a checkpoint without pickling: a zoo spec, the structural transforms
applied to it (exits, quantization, codec hooks: replayed by the stage that recorded them, passed in
as `replay`), then every layer resized to the saved tensors (pruning)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .fmc.maps import find_hooks
from .io import load_weights
from .models import build_model, imported
from .qmodules import QuantConv2d, QuantLinear

Replay = Callable[[nn.Module, dict, torch.Tensor], nn.Module]


def record(model: nn.Module, transform: dict) -> None:
    arch = getattr(model, "chaincomp_arch", None) or {"model": {}, "transforms": []}
    arch = {"model": arch["model"], "transforms": [*arch["transforms"], transform]}
    model.chaincomp_arch = arch


def resync_fmc(model: nn.Module) -> None:
    """Layers swapped for quantized or resized ones lose their forward hooks; an fmc point that is
    such a layer gets its codec back here, so the model itself (not only the ledger) stays coded."""
    hooks = find_hooks(model)
    if hooks is not None:
        hooks.sync(model)


def _resized(m: nn.Module, state: dict[str, torch.Tensor], name: str) -> nn.Module | None:
    w = state.get(f"{name}.weight")
    if w is None:
        return None
    if isinstance(m, nn.Conv2d) and tuple(w.shape) != tuple(m.weight.shape):
        depthwise = m.groups == m.in_channels and m.groups > 1
        groups = w.shape[0] if depthwise else m.groups
        cin = w.shape[0] if depthwise else w.shape[1] * m.groups
        kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=groups, bias=m.bias is not None)
        if isinstance(m, QuantConv2d):
            return QuantConv2d(cin, w.shape[0], m.kernel_size, spec=m.spec(), **kw)
        return nn.Conv2d(cin, w.shape[0], m.kernel_size, **kw)
    if isinstance(m, nn.Linear) and tuple(w.shape) != tuple(m.weight.shape):
        if isinstance(m, QuantLinear):
            return QuantLinear(w.shape[1], w.shape[0], m.bias is not None, spec=m.spec())
        return nn.Linear(w.shape[1], w.shape[0], m.bias is not None)
    if isinstance(m, nn.BatchNorm2d) and w.shape[0] != m.num_features:
        return nn.BatchNorm2d(w.shape[0], eps=m.eps, momentum=m.momentum)
    return None


def resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every conv, linear and BN layer the shape of its saved tensors (a pruned model)."""
    for name, m in list(model.named_modules()):
        new = _resized(m, state, name)
        if new is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    resync_fmc(model)


def rebuild(arch: dict, state: dict[str, torch.Tensor], sample: torch.Tensor, replay: Replay,
            where: str = "checkpoint") -> nn.Module:
    """The model a checkpoint holds: `replay` applies each recorded transform (`stages.replay`)."""
    try:
        model = build_model(**arch["model"])
        for t in arch["transforms"]:
            model = replay(model, t, sample)
        resize_to(model, state)
        model.load_state_dict(state, strict=True)
    except UserError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"{where}: weights do not fit the architecture {arch.get('model')} ({first}); "
                        "use the checkpoint of this recipe's model") from None
    model.chaincomp_arch = arch
    return model


def initial_model(cfg, sample: torch.Tensor, zoo_kwargs: dict) -> tuple[nn.Module, bool]:
    """The model a recipe's `model` section names, and whether it came with weights (then it is not trained).
    An imported model loads its weights before it is cut into blocks (the file has the user's names)."""
    if cfg.import_:
        weights = load_weights(cfg.weights) if cfg.weights else None
        return imported.build(cfg.spec(sample.shape[1:]), weights, "model"), weights is not None
    model = build_model(cfg.name, width=cfg.width, **zoo_kwargs)
    if cfg.weights:
        load_into(model, load_weights(cfg.weights), f"model.weights ({cfg.weights})")
    return model, bool(cfg.weights)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load user weights into a zoo model; a mismatch is the user's to fix."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"{where}: weights do not fit model {model.chaincomp_arch['model']} ({first})") from None
