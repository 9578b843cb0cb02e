"""The one registry of techniques. A stage registers itself (`@register`) and is then known everywhere:
the recipe's `chain` union, the letters of the order study and the search, and the replay of the
structural transforms a checkpoint records are all read from here.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import arch
from ..errors import UserError
from .base import Stage, StageConfig

STAGES: dict[str, type[Stage]] = {}


def register(stage: type[Stage]) -> type[Stage]:
    """Make a technique known (use as a class decorator on the stage). Letters and transforms are unique."""
    for other in STAGES.values():
        if other is not stage and other.technique == stage.technique:
            raise ValueError(f"technique '{stage.technique}' is registered twice")
        if other.letter == stage.letter and other.technique != stage.technique:
            raise ValueError(f"stages '{other.technique}' and '{stage.technique}' share the letter {stage.letter}")
        if stage.transform and other.transform == stage.transform and other.technique != stage.technique:
            raise ValueError(f"stages '{other.technique}' and '{stage.technique}' both replay '{stage.transform}'")
    STAGES[stage.technique] = stage
    ordered = sorted(STAGES.values(), key=lambda s: s.rank)   # the papers' order, whatever the import order
    STAGES.clear()
    STAGES.update((s.technique, s) for s in ordered)
    return stage


def make_stage(config: StageConfig) -> Stage:
    return STAGES[config.technique](config)


def configs() -> tuple[type[StageConfig], ...]:
    """Every stage's config class, in registration order (the members of the recipe's chain union)."""
    return tuple(s.Config for s in STAGES.values())


def letters(studied_only: bool = False) -> dict[str, str]:
    """technique -> one-letter name (D, P, Q, E...); with `studied_only`, the techniques the order study
    and the search may reorder."""
    return {t: s.letter for t, s in STAGES.items() if s.studied or not studied_only}


def canonical_order() -> tuple[str, ...]:
    """The studied techniques in the papers' order (D -> P -> Q -> E): it breaks ties in the order study."""
    studied = [s for s in STAGES.values() if s.studied]
    return tuple(s.technique for s in sorted(studied, key=lambda s: s.rank))


def settle(model: nn.Module, data) -> nn.Module:
    """After a stage: every technique keeps what it added valid (`Stage.settle`)."""
    for s in STAGES.values():
        model = s.settle(model, data)
    return model


def replay(model: nn.Module, t: dict, sample: torch.Tensor) -> nn.Module:
    """Apply one recorded structural transform with the code of the stage that made it."""
    for s in STAGES.values():
        if s.transform == t.get("type"):
            return s.replay(model, t, sample)
    raise UserError(f"checkpoint: unknown transform '{t.get('type')}' (written by another chaincomp version?)")


def rebuild(spec: dict, state: dict[str, torch.Tensor], sample: torch.Tensor, where: str = "checkpoint") -> nn.Module:
    """The model a checkpoint holds, every recorded transform replayed by its own stage."""
    return arch.rebuild(spec, state, sample, replay, where=where)
