"""One module per technique, all with the same contract (`base.Stage`). A stage never imports another."""
from __future__ import annotations

from .base import Context, Stage, StageConfig
from .distill import Distill
from .early_exit import EarlyExit
from .fmc import Fmc
from .prune import Prune
from .quantize import Quantize

STAGES: dict[str, type[Stage]] = {s.technique: s for s in (Distill, Prune, Quantize, EarlyExit, Fmc)}
TECHNIQUE_LETTER = {"distill": "D", "prune": "P", "quantize": "Q", "early_exit": "E", "fmc": "F"}


def register(stage: type[Stage]) -> None:
    """Add a technique (used by the feature-map compression stage)."""
    STAGES[stage.technique] = stage


def make_stage(config: StageConfig) -> Stage:
    return STAGES[config.technique](config)


__all__ = ["Context", "Stage", "StageConfig", "STAGES", "make_stage", "register", "TECHNIQUE_LETTER"]
