"""Super-resolution networks: input LR image, output the image `scale` times larger, same channels.

All three follow the zoo contract (forward(x) == head(blocks[-1](...blocks[0](x)))) with only plain
Conv2d / activation / PixelShuffle modules, so pruning and quantization treat them like any CNN. The
upsampling is always a sub-pixel conv (conv to C*scale^2 channels + PixelShuffle) in the head; a pruner
must leave the whole head unpruned (torch-pruning does not follow how PixelShuffle regroups channels).

- ESPCN (Shi et al. 2016): 5x5 64 -> 3x3 32 -> sub-pixel 3x3, tanh activations as in the paper.
- FSRCNN (Dong et al. 2016): feature 5x5 d=56, shrink 1x1 s=12, m=4 mapping 3x3, expand 1x1, then the
  paper's 9x9 stride-s deconvolution is replaced by its sub-pixel equivalent (a conv with the same
  LR receptive field, ceil(9/scale) rounded up to odd, + PixelShuffle) so no ConvTranspose2d is needed.
  PReLU has one shared slope (not one per channel) so pruning never has to resize it.
- EDSR (Lim et al. 2017), small: 3x3 stem, `n_resblocks` residual blocks (conv-ReLU-conv, no BN),
  a body conv, then conv to F*scale^2 + PixelShuffle + 3x3 conv to RGB. The global skip over the body
  is left out so the body stays a plain sequence of blocks; with a few blocks this costs little.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")


class _Sequential(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class ESPCN(_Sequential):
    def __init__(self, scale: int = 2, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        _check_scale(scale)
        c1, c2 = _ch(64, width), _ch(32, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, c1, 5, padding=2), nn.Tanh()),
                                     nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.Tanh())])
        self.head = nn.Sequential(nn.Conv2d(c2, in_channels * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))


class FSRCNN(_Sequential):
    def __init__(self, scale: int = 2, in_channels: int = 3, width: float = 1.0, d: int = 56, s: int = 12,
                 m: int = 4):
        super().__init__()
        _check_scale(scale)
        d, s = _ch(d, width), _ch(s, width)

        def layer(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.PReLU())

        blocks = [layer(in_channels, d, 5), layer(d, s, 1)] + [layer(s, s, 3) for _ in range(m)] + [layer(s, d, 1)]
        self.blocks = nn.ModuleList(blocks)
        k = math.ceil(9 / scale) | 1
        self.head = nn.Sequential(nn.Conv2d(d, in_channels * scale ** 2, k, padding=k // 2), nn.PixelShuffle(scale))


class ResBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, scaled, plus identity (no batch norm, as in EDSR)."""

    def __init__(self, c: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()  # not in place: an in-place op on a conv output hides the conv from torch-pruning
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(_Sequential):
    def __init__(self, scale: int = 2, in_channels: int = 3, width: float = 1.0, n_resblocks: int = 4,
                 n_feats: int = 32, res_scale: float = 1.0):
        super().__init__()
        _check_scale(scale)
        f = _ch(n_feats, width)
        self.blocks = nn.ModuleList([nn.Conv2d(in_channels, f, 3, padding=1)]
                                    + [ResBlock(f, res_scale) for _ in range(n_resblocks)]
                                    + [nn.Conv2d(f, f, 3, padding=1)])
        self.head = nn.Sequential(nn.Conv2d(f, f * scale ** 2, 3, padding=1), nn.PixelShuffle(scale),
                                  nn.Conv2d(f, in_channels, 3, padding=1))
