"""The exit-aware network: the backbone's blocks, the final head, and exit heads after chosen blocks.

In training (and for tracing) forward returns every output, exits first, final last, so every
technique sees one graph: pruning keeps exit heads consistent, quantization quantizes them too.
Which output answers for an input is decided by an exit rule (`exits.rules`).
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import make_head


class ExitNetwork(nn.Module):
    def __init__(self, blocks: nn.ModuleList, head: nn.Module, exits: dict[int, nn.Module]):
        super().__init__()
        self.blocks = blocks
        self.head = head
        self.exits = nn.ModuleDict({str(i): h for i, h in sorted(exits.items())})
        self.exit_rule: dict = {"criterion": "confidence", "threshold": 2.0}  # 2.0: never exits until calibrated

    @property
    def exit_points(self) -> list[int]:
        return sorted(int(k) for k in self.exits.keys())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if str(i) in self.exits:
                outs.append(self.exits[str(i)](x))
        outs.append(self.head(x))
        return outs


def block_channels(blocks: nn.ModuleList, sample: torch.Tensor) -> list[int]:
    """Output channels of every block, read from a real forward pass (works after pruning)."""
    chans = []
    with torch.no_grad():
        x = sample[:1]
        for b in blocks:
            was = b.training
            b.eval()
            x = b(x)
            b.train(was)
            chans.append(x.shape[1])
    return chans


def attach_exits(model: nn.Module, points: list[int] | str, head: str, num_classes: int,
                 sample: torch.Tensor, options: dict | None = None) -> ExitNetwork:
    """Wrap a blocks/head model into an ExitNetwork with a fresh exit head after each chosen block."""
    blocks = model.blocks
    n = len(blocks)
    if points == "all":
        pts = list(range(n - 1))
    else:
        pts = sorted(set(int(p) % n for p in points))
        pts = [p for p in pts if p < n - 1]
    chans = block_channels(blocks, sample)
    if isinstance(model, ExitNetwork):
        existing = {int(k): v for k, v in model.exits.items()}
    else:
        existing = {}
    heads = {p: existing.get(p) or make_head(head, chans[p], num_classes, options) for p in pts}
    net = ExitNetwork(blocks, model.head, heads)
    net.chaincomp_arch = getattr(model, "chaincomp_arch", {"model": {}, "transforms": []})
    return net


def is_exit_network(model: nn.Module) -> bool:
    return isinstance(model, ExitNetwork)
