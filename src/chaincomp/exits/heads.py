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


# ------------------------------------------------------------------ the authors' head (Predictive Exit)

class LogisticBoF(nn.Module):
    """The authors' BoF layer (their `LogisticConvBoF`): a 1x1-conv codebook, similarities made
    non-negative by (tanh(a*x + c) + 1) / 2, normalised to sum n1 over codewords, average pooled to
    `out` x `out` and scaled by n2; a, c, n1 (starts at K) and n2 (starts at the pool's kernel size)
    are learnt. Shared by every exit of one (channels, resolution) group on VGG."""

    def __init__(self, cin: int, codewords: int = 64, kernel: float = 1.0):
        super().__init__()
        self.codebook = nn.Conv2d(cin, codewords, 1)
        self.a = nn.Parameter(torch.ones(1))
        self.c = nn.Parameter(torch.zeros(1))
        self.n1 = nn.Parameter(torch.full((1,), float(codewords)))
        self.n2 = nn.Parameter(torch.full((1,), float(kernel)))

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        s = (torch.tanh(self.a * self.codebook(x) + self.c) + 1) / 2
        s = s / (s.sum(1, keepdim=True) + 5e-16) * self.n1
        return torch.flatten(nn.functional.adaptive_avg_pool2d(s, out) * self.n2, 1)


class SharedParts(nn.Module):
    """Where the parts exits share live (registered once, so the state dict has no duplicates and
    safetensors can save it): BoF layers and the two FC layers, each under its sharing key."""

    def __init__(self):
        super().__init__()
        self.bof = nn.ModuleDict()
        self.fc1 = nn.ModuleDict()
        self.fc2 = nn.ModuleDict()


class AuthorsHead(nn.Module):
    """One exit of the authors' network: BoF (2x2 pool; 1x1 after a max-pool), then FC 4K -> 64 ->
    classes with no non-linearity between (after a max-pool only the 64 -> classes layer, K = 64).
    The parts are looked up in a `SharedParts` held by reference, not registered here: the
    network registers them once. ``take``: channels of the input that are this exit's feature map
    (inside a residual block the layer also carries the shortcut)."""

    fuse = True     # eval mode runs the folded form (`_folded`); `unfolded()` turns it off (cost profiling)

    def __init__(self, parts: SharedParts, bof: str, fc1: str | None, fc2: str, pool: int, take: int):
        super().__init__()
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "_fold", None)
        self.keys, self.pool, self.take = (bof, fc1, fc2), pool, take

    def _modules_used(self):
        bof, fc1, fc2 = self.keys
        return self.parts.bof[bof], (self.parts.fc1[fc1] if fc1 is not None else None), self.parts.fc2[fc2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.take:
            x = x[:, :self.take]
        if not self.training and self.fuse:
            f = self._fold
            if f is None or f[0] != tuple(p._version for p in f[1]):
                f = self._folded()
            w, b, wf, bf = f[2]
            s = nn.functional.conv2d(x, w, b).tanh_().add_(1)
            s = s.div_(s.sum(1, keepdim=True))
            return nn.functional.linear(nn.functional.adaptive_avg_pool2d(s, self.pool).flatten(1), wf, bf)
        bof, fc1, fc2 = self._modules_used()
        h = bof(x, self.pool)
        if fc1 is not None:
            h = fc1(h)
        return fc2(h)

    @torch.no_grad()
    def _folded(self):
        """The same function with its constants folded (inference only): a and c into the codebook;
        the /2 cancels in the normalisation; n1 * n2 and the two FC layers (no non-linearity between)
        into one linear map. 8 operators instead of 15: at batch size 1 a head's wall time is its
        operator count, not its MACs. Rebuilt whenever a parameter changed (tensor versions)."""
        bof, fc1, fc2 = self._modules_used()
        ps = [bof.codebook.weight, bof.codebook.bias, bof.a, bof.c, bof.n1, bof.n2, fc2.weight, fc2.bias]
        if fc1 is not None:
            ps += [fc1.weight, fc1.bias]
        w = bof.codebook.weight * bof.a
        b = bof.codebook.bias * bof.a + bof.c
        scale = bof.n1 * bof.n2
        if fc1 is not None:
            wf, bf = fc2.weight @ fc1.weight * scale, fc2.weight @ fc1.bias + fc2.bias
        else:
            wf, bf = fc2.weight * scale, fc2.bias.clone()
        object.__setattr__(self, "_fold", (tuple(p._version for p in ps), ps, (w, b, wf, bf)))
        return self._fold

    def train(self, mode: bool = True):
        object.__setattr__(self, "_fold", None)     # parameters may be replaced (load, another stage)
        return super().train(mode)


class unfolded:
    """Within it, authors' heads run as written (every FC layer called): the cost ledger counts the
    head the authors designed, whose MACs are at least those of the folded form."""

    def __init__(self, net: nn.Module):
        self.heads = [m for m in net.modules() if isinstance(m, AuthorsHead)]

    def __enter__(self):
        for h in self.heads:
            h.fuse = False

    def __exit__(self, *exc):
        for h in self.heads:
            h.fuse = True
