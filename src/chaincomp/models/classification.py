"""Classification networks written out by hand (torchvision does not run here).

Every zoo model follows one contract so that every technique works on every model:
`model.blocks` (nn.ModuleList, run in order) and `model.head`; forward(x) == head(blocks...(x)).
Exits attach after a block; pruning, quantization and distillation see plain nn modules.
"""
from __future__ import annotations

import torch
from torch import nn


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class Sequential(nn.Module):
    """Blocks then head: the contract in its plainest form."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ClassifierHead(nn.Sequential):
    """Global average pool then a linear layer."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def resnet(depth_per_stage: list[int], widths: list[int], *, in_channels: int = 3, num_classes: int = 10,
           width: float = 1.0, stem_stride: int = 1) -> Sequential:
    """CIFAR-style ResNet: a 3x3 stem, stages of basic blocks, each stage after the first halving the size."""
    ws = [_ch(w, width) for w in widths]
    blocks: list[nn.Module] = [conv_bn_relu(in_channels, ws[0], stem_stride)]
    cin = ws[0]
    for s, (n, cout) in enumerate(zip(depth_per_stage, ws)):
        for i in range(n):
            stride = 2 if (i == 0 and s > 0) else 1
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
    return Sequential(blocks, ClassifierHead(cin, num_classes))


def cifar_resnet(depth: int):
    """He et al.'s CIFAR ResNet-(6n+2): n basic blocks in each of three stages of 16, 32, 64 channels.
    The shallow ones (8, 14) are the students a deep teacher is distilled into for deployment."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
    n = (depth - 2) // 6

    def build(**kw) -> Sequential:
        return resnet([n, n, n], [16, 32, 64], **kw)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}: {n} basic blocks per stage, 16/32/64 channels."
    return build


def resnet34(**kw) -> Sequential:
    """ResNet-34 layout (3-4-6-3 blocks, 64..512 channels) with a CIFAR stem, as used by the papers."""
    return resnet([3, 4, 6, 3], [64, 128, 256, 512], **kw)


def vgg(cfg: list, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> Sequential:
    """VGG with BN: one block per conv layer ('M' after a number pools inside that block), so exits can
    sit after every conv layer as Predictive Exit needs."""
    blocks: list[nn.Module] = []
    cin = in_channels
    for i, c in enumerate(cfg):
        if c == "M":
            continue
        pool = i + 1 < len(cfg) and cfg[i + 1] == "M"
        cout = _ch(c, width)
        blocks.append(conv_bn_relu(cin, cout, pool=pool))
        cin = cout
    return Sequential(blocks, ClassifierHead(cin, num_classes))


VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    # Small nets for 8x8 digits: fast on a CPU, deep enough to chain and to exit early.
    "digits_cnn": [32, 32, "M", 64, 64, "M"],
    "digits_vgg": [32, 32, 32, 32, "M", 64, 64, 64, 64, "M"],
}


def vgg_by_name(name: str):
    def build(**kw) -> Sequential:
        return vgg(VGG_CFG[name], **kw)

    build.__name__ = name
    build.__doc__ = f"VGG-style network '{name}': {VGG_CFG[name]}"
    return build
