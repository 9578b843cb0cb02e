"""The one shape every dataset takes: in-memory splits plus what the task is. No technique lives here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

TASKS = ("classification", "segmentation", "super_resolution")
METRIC_OF_TASK = {"classification": "top1", "segmentation": "miou", "super_resolution": "psnr"}


@dataclass
class Split:
    """Inputs and targets of one split.

    `x`/`y` are stacked tensors when all samples share a shape (classification, segmentation,
    super-resolution training patches) or lists of tensors (C,H,W) when they do not (super-resolution
    test images); lists are served one sample per batch.
    """

    x: torch.Tensor | Sequence[torch.Tensor]
    y: torch.Tensor | Sequence[torch.Tensor]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def stacked(self) -> bool:
        return isinstance(self.x, torch.Tensor)

    def subset(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if not self.stacked:
            for i in order.tolist():
                yield self.x[i].unsqueeze(0), self.y[i].unsqueeze(0)
            return
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            yield self.x[idx], self.y[idx]


@dataclass
class TaskData:
    """A dataset ready for training: three splits and the facts a model and a metric need."""

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    in_channels: int
    input_size: tuple[int, int]          # (H, W) of a training input
    num_classes: int | None = None       # classes (segmentation: without the ignore id)
    ignore_index: int | None = None      # segmentation label to ignore
    scale: int | None = None             # super-resolution factor
    augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None
    info: dict = field(default_factory=dict)

    @property
    def metric_name(self) -> str:
        return METRIC_OF_TASK[self.task]

    def sample_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the training shape, for tracing and cost counting."""
        return torch.zeros(batch, self.in_channels, *self.input_size)
