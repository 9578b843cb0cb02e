"""The exit-aware network: the backbone's blocks, the final head, and exit heads after chosen blocks.

In training (and for tracing) forward returns every output, exits first, final last, so every
technique sees one graph: pruning keeps exit heads consistent, quantization quantizes them too.
Which output answers for an input is decided by an exit rule (`exits.rules`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
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


def resolve_points(model: nn.Module, points: list[int | str] | str, where: str = "early_exit.points") -> list[int]:
    """Block indices of exit points. A model cut from its traced graph (`models.imported`) carries the points
    found there: "all" means those (after residual merges and changes of spatial size), and a module path
    (e.g. "layer2" or "features.6") means the block that module ends; a zoo model exits after any block."""
    n = len(model.blocks)
    auto, ends = getattr(model, "auto_exits", None), getattr(model, "module_ends", None)
    if points == "all":
        return list(auto) if auto is not None else list(range(n - 1))
    out = set()
    for p in points:
        if isinstance(p, str):
            if ends is None or not ends:
                raise UserError(f"{where}: '{p}': module paths name exit points of your own (imported) models; "
                                f"give block indices below {n - 1} for a zoo model")
            if p not in ends:
                raise UserError(f"{where}: '{p}' does not end a block of the traced model (an exit needs one map "
                                f"carrying everything forward); choose one of {sorted(ends)[:12]}")
            out.add(ends[p])
        else:
            out.add(int(p) % n)
    return sorted(p for p in out if p < n - 1)


def attach_exits(model: nn.Module, points: list[int | str] | str, head: str, num_classes: int,
                 sample: torch.Tensor, options: dict | None = None) -> ExitNetwork:
    """Wrap a blocks/head model into an ExitNetwork with a fresh exit head after each chosen block."""
    blocks = model.blocks
    pts = resolve_points(model, points)
    chans = block_channels(blocks, sample)
    if isinstance(model, ExitNetwork):
        existing = {int(k): v for k, v in model.exits.items()}
    else:
        existing = {}
    heads = {p: existing.get(p) or make_head(head, chans[p], num_classes, options) for p in pts}
    net = ExitNetwork(blocks, model.head, heads)
    for attr in ("auto_exits", "module_ends"):   # what the traced graph found stays known to later stages
        if hasattr(model, attr):
            setattr(net, attr, getattr(model, attr))
    net.chaincomp_arch = getattr(model, "chaincomp_arch", {"model": {}, "transforms": []})
    return net


def is_exit_network(model: nn.Module) -> bool:
    return isinstance(model, ExitNetwork)
