"""Exit head topologies. One unified topology per network, as Predictive Exit requires."""
from __future__ import annotations

import torch
from torch import nn


class PoolHead(nn.Sequential):
    """1x1 conv + BN + ReLU, average pool to 2x2, linear. Pooling to 2x2 rather than 1x1 keeps the
    coarse layout that early features still need (a global pool after the first conv layer leaves
    an exit on digits near chance; 2x2 makes it useful) at the cost of 4x the linear layer."""

    def __init__(self, cin: int, num_classes: int, hidden: int | None = None):
        h = hidden or max(16, cin)
        super().__init__(nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * h, num_classes))


class BagOfFeaturesHead(nn.Module):
    """The Predictive Exit head: a 1x1-conv codebook of K codewords, tanh similarities normalised over
    codewords, average pooled to 2x2, then FC (4K -> 64 -> classes)."""

    def __init__(self, cin: int, num_classes: int, codewords: int = 64):
        super().__init__()
        self.codebook = nn.Conv2d(cin, codewords, 1)
        self.act = nn.Tanh()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * codewords, 64)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.codebook(x))
        s = s / (s.abs().sum(1, keepdim=True) + 1e-6)
        return self.fc2(self.relu(self.fc1(self.flatten(self.pool(s)))))


HEADS = {"pool": PoolHead, "bof": BagOfFeaturesHead}


def make_head(kind: str, cin: int, num_classes: int, options: dict | None = None) -> nn.Module:
    """A head of `kind`; `options` are its own settings (bof: `codewords`), recorded in the
    architecture so a checkpoint rebuilds the same head."""
    return HEADS[kind](cin, num_classes, **(options or {}))
