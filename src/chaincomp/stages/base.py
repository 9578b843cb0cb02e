"""The one contract every technique follows: a validated config and apply(model, context) -> model.

The chain runner knows nothing else of a stage; everything measured about the result is read
from the returned model by the ledger.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..data.base import TaskData
from ..train import FitConfig, LossFn, fit


class StageConfig(BaseModel):
    """Fields every stage shares: its fine-tuning budget."""

    model_config = ConfigDict(extra="forbid")
    technique: str
    epochs: int = Field(5, ge=0, le=100_000, description="fine-tuning epochs of this stage")
    lr: float = Field(0.01, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = Field(5e-4, ge=0, le=1)

    def fit_config(self, epochs: int | None = None) -> FitConfig:
        return FitConfig.of(self, epochs)


@dataclass
class Context:
    """What a stage may use: the data, the seed, and where it sits in the chain."""

    data: TaskData
    seed: int
    stage_index: int
    stage_name: str
    notes: dict = field(default_factory=dict)   # what the stage wants recorded in the ledger

    def fit(self, model: nn.Module, cfg: FitConfig, loss_fn: LossFn | None = None, params=None) -> dict:
        return fit(model, self.data, cfg, loss_fn=loss_fn, stage=self.stage_name,
                   seed=self.seed * 1000 + self.stage_index, params=params)


class Stage(ABC):
    """A technique. Class attributes say how the rest of the system knows it (see `registry`)."""

    technique: ClassVar[str]                  # the recipe's `technique:` value
    letter: ClassVar[str]                     # one letter in order names (D, P, Q, E...)
    Config: ClassVar[type[StageConfig]]
    studied: ClassVar[bool] = False           # may the order study and the search reorder it?
    rank: ClassVar[int] = 100                 # place in the papers' order (ties in the order study)
    transform: ClassVar[str | None] = None    # the structural transform it records, if any

    @staticmethod
    def settle(model: nn.Module, data: TaskData) -> nn.Module:
        """Called after every stage (of any technique): keep what this technique added valid when later
        stages changed the model (early exit recalibrates its thresholds). Default: nothing."""
        return model

    @staticmethod
    def replay(model: nn.Module, t: dict, sample) -> nn.Module:
        """Re-apply a recorded transform of this stage (checkpoint rebuild, a student like its teacher)."""
        raise NotImplementedError

    def __init__(self, config: StageConfig):
        self.config = config

    @abstractmethod
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Return the compressed model (may be the same object, changed in place)."""
