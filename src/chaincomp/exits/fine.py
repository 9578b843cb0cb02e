"""Fine-grained exit points, as the Predictive Exit authors place them: after every conv layer and
every max-pool, inside residual blocks too (VGG-19: 20 exits, ResNet-34: 32).

The zoo's models run as `blocks`; `fine_layers` splits them into layers without copying a weight:
a VGG block (conv-BN-ReLU, then a max-pool) becomes two layers, a residual block two halves. The
first half of a residual block returns its conv1 output and the shortcut side by side on the
channel axis (one tensor, so every walker of `blocks` - the runtime, the cost table, the batched
outputs - works unchanged); an exit there reads only the conv1 part (`AuthorsHead.take`).

`authors_network` then puts the authors' head (`heads.AuthorsHead`) after every layer but the last,
with the parts shared as they share them: on a plain (VGG) network one FC 256 -> 64 and one
64 -> classes for all exits and one BoF codebook per (channels, resolution) group; on a ResNet the
FC layers per stage and a codebook per exit.
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import AuthorsHead, LogisticBoF, SharedParts
from .model import ExitNetwork

HIDDEN = 64   # the authors' FC 4K -> 64 -> classes


class ResidualIn(nn.Module):
    """First half of a basic block: relu(bn1(conv1(x))) and shortcut(x), concatenated on channels."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu1, self.shortcut = block.conv1, block.bn1, block.relu1, block.shortcut
        self.out_channels = block.conv1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.relu1(self.bn1(self.conv1(x))), self.shortcut(x)], 1)


class ResidualOut(nn.Module):
    """Second half: relu(bn2(conv2(h)) + shortcut), h and the shortcut read from ResidualIn's output."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, block.relu2
        self.c = block.conv1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(x[:, :self.c])) + x[:, self.c:])


def fine_layers(blocks: nn.ModuleList) -> tuple[nn.ModuleList, list[bool]]:
    """(layers, residual) with a layer per conv and per max-pool; `residual[i]`: layer i is the first
    half of a residual block (its output carries the shortcut)."""
    layers: list[nn.Module] = []
    residual: list[bool] = []
    for b in blocks:
        if hasattr(b, "conv1") and hasattr(b, "conv2") and hasattr(b, "shortcut"):
            layers += [ResidualIn(b), ResidualOut(b)]
            residual += [True, False]
        elif isinstance(b, nn.Sequential) and isinstance(b[-1], nn.MaxPool2d) and len(b) > 1:
            layers += [nn.Sequential(*list(b)[:-1]), b[-1]]
            residual += [False, False]
        else:
            layers.append(b)
            residual.append(False)
    return nn.ModuleList(layers), residual


def n_fine_layers(model: nn.Module) -> int:
    return len(fine_layers(model.blocks)[0])


def authors_network(model: nn.Module, num_classes: int, sample: torch.Tensor, codewords: int = 64,
                    share: str = "auto") -> ExitNetwork:
    """The authors' exit network over `model`'s fine layers. ``share``: ``network`` (VGG: FC layers
    for all exits, a codebook per (channels, resolution)), ``stage`` (ResNet: FC layers per stage,
    a codebook per exit), ``none``, or ``auto`` (``stage`` when the model has residual blocks)."""
    layers, residual = fine_layers(model.blocks)
    if share == "auto":
        share = "stage" if any(residual) else "network"
    feats = []
    with torch.no_grad():
        x = sample[:1]
        for layer, res in zip(layers, residual):
            was = layer.training
            x = layer.eval()(x)
            layer.train(was)
            c = layer.out_channels if res else x.shape[1]
            feats.append((c, x.shape[-1]))
    parts = SharedParts()
    heads: dict[int, nn.Module] = {}
    for i, (c, size) in enumerate(feats[:-1]):
        pooled = isinstance(layers[i], nn.MaxPool2d) and codewords == HIDDEN
        out = 1 if pooled else min(2, size)
        group = f"c{c}_s{size}"
        bof = group if share == "network" else f"e{i}"
        fc = {"network": "all", "stage": f"c{c}", "none": f"e{i}"}[share]
        if bof not in parts.bof:
            parts.bof[bof] = LogisticBoF(c, codewords, kernel=size / out)
        fc1 = None
        if not pooled:
            fc1 = f"{fc}_{out}"
            if fc1 not in parts.fc1:
                parts.fc1[fc1] = nn.Linear(codewords * out * out, HIDDEN)
        if fc not in parts.fc2:
            parts.fc2[fc] = nn.Linear(HIDDEN, num_classes)
        heads[i] = AuthorsHead(parts, bof, fc1, fc, out, c)
    net = ExitNetwork(layers, model.head, heads)
    net.shared = parts
    net.chaincomp_arch = getattr(model, "chaincomp_arch", {"model": {}, "transforms": []})
    return net
