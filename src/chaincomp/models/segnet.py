"""A compact encoder-decoder for CamVid that trains on a CPU (0.71 GMAC per 180x240 image, 0.83 M params).

Encoder: a full-resolution stem and 4 stride-2 stages (16-32-64-128-128 channels at width 1);
decoder: 4 stages, each a 3x3 conv, bilinear upsampling to the skip's size (any input size works),
and the add of the encoder feature of that resolution; head: a 1x1 conv to class logits.

How the long skips fit the zoo contract (forward(x) == head(blocks[-1](...blocks[0](x)))):
the skips travel through a small per-forward stack that the blocks themselves share. Each encoder
stage pushes its *input* (the previous block's output, exactly the tensor that flowed between blocks,
so a hook that compresses a block's output also compresses the skip), each decoder stage pops one,
and blocks[0] empties the stack. So running the blocks in order from blocks[0] (as `forward`, an exit
wrapper or a feature-map codec hook does) is the whole network; a decoder block run on its own,
without the encoder of the same pass, raises. Only plain Conv2d/BatchNorm2d/ReLU hold weights, and the
adds are ordinary tensor ops, so channel pruning couples each decoder conv with its skip source.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SkipStack:
    """Encoder features waiting for their decoder stage; a plain object: no parameters, no state_dict."""

    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []


class Encoder(nn.Module):
    """One encoder stage; pushes its input for the decoder (blocks[0] instead clears the stack)."""

    def __init__(self, body: nn.Module, skips: SkipStack, first: bool = False):
        super().__init__()
        self.body = body
        self.skips = skips
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            self.skips.items.clear()
        else:
            self.skips.items.append(x)
        return self.body(x)


class Decoder(nn.Module):
    """conv-BN-ReLU at the coarse resolution, bilinear upsampling to the skip's size, add the skip."""

    def __init__(self, cin: int, cout: int, skips: SkipStack):
        super().__init__()
        self.body = conv_bn_relu(cin, cout)
        self.skips = skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skips.items:
            raise RuntimeError("SegNet decoder block run without its encoder: run model.blocks in order "
                               "from blocks[0] in the same pass")
        skip = self.skips.items.pop()
        x = F.interpolate(self.body(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return x + skip


class SegNet(nn.Module):
    """blocks = [stem, 4 encoder stages, 4 decoder stages] (9 blocks), head = 1x1 conv to logits."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c = [_ch(k, width) for k in (16, 32, 64, 128, 128)]
        self._skips = SkipStack()
        blocks: list[nn.Module] = [Encoder(conv_bn_relu(in_channels, c[0]), self._skips, first=True)]
        for i in range(4):
            blocks.append(Encoder(nn.Sequential(conv_bn_relu(c[i], c[i + 1], 2), conv_bn_relu(c[i + 1], c[i + 1])),
                                  self._skips))
        for i in range(4, 0, -1):
            blocks.append(Decoder(c[i], c[i - 1], self._skips))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)
