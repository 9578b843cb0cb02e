"""The one shape every dataset takes: in-memory splits plus what the task is. No technique lives here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ..device import amp_helps

CPU = torch.device("cpu")

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
    held: dict = field(default_factory=dict, repr=False, compare=False)  # device -> (x, y) copies held there

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

    def hold(self, device: torch.device) -> bool:
        """Keep a copy of a stacked split on `device` (uploaded once), so batches are cut there."""
        if device.type == "cpu" or not self.stacked:
            return False
        if device not in self.held:
            self.held[device] = (self.x.to(device), self.y.to(device))
        return True

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in order (or shuffled by the CPU `generator`, so the order is the same on every device),
        on `device`: cut from the held copy when there is one, else copied there batch by batch."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        move = device is not None and device.type != "cpu"
        if not self.stacked:
            for i in order.tolist():
                x, y = self.x[i].unsqueeze(0), self.y[i].unsqueeze(0)
                yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True)) if move else (x, y)
            return
        xs, ys = self.held.get(device, (self.x, self.y)) if move else (self.x, self.y)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            if move and xs.device != idx.device:
                idx = idx.to(device, non_blocking=True)
            x, y = xs[idx], ys[idx]
            yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True)) if move else (x, y)


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
    device: torch.device = CPU           # where training and evaluation run (chosen at the edge)
    amp: bool = False                    # bf16 autocast for float training (where `device.amp_helps`)
    channels_last: bool = False          # train channels_last on the CPU too (on CUDA it always is)

    def place(self, device: torch.device, amp: bool = False, hold_fraction: float = 0.25,
              channels_last: bool | None = None) -> "TaskData":
        """Run on `device`; on a GPU hold every stacked split there when the three fit in `hold_fraction`
        of its memory (CIFAR-10 as float32 is 0.7 GB), so no batch crosses the bus during training."""
        self.device, self.amp = device, bool(amp and amp_helps(device))
        self.channels_last = bool(channels_last)
        if device.type == "cuda":
            splits = [s for s in (self.train, self.val, self.test) if s.stacked]
            need = sum(s.x.nbytes + s.y.nbytes for s in splits)
            if need <= hold_fraction * torch.cuda.get_device_properties(device).total_memory:
                for s in splits:
                    s.hold(device)
        return self

    @property
    def metric_name(self) -> str:
        return METRIC_OF_TASK[self.task]

    def sample_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the training shape, for tracing and cost counting."""
        return torch.zeros(batch, self.in_channels, *self.input_size)
