"""The cost ledger, computed by running the actual model: MACs, BitOps, parameters, bytes.

BitOps = sum over conv/linear layers of MACs x weight bits x activation bits (FP32 = 32 x 32),
as in Chain of Compression. Layers are found by forward hooks on a real forward pass, so a pruned
model, a narrower student or a quantized layer is counted as it is, never as configured.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

FP_BITS = 32


@dataclass
class LayerCost:
    name: str
    macs: int
    weight_bits: int
    act_bits: int
    weight_bytes: float      # at the stored precision
    in_bytes: float          # input activation bytes at act_bits
    out_bytes: float         # output activation bytes at 32-bit (or the next layer's act bits)

    @property
    def bitops(self) -> int:
        return self.macs * self.weight_bits * self.act_bits


@dataclass
class CostProfile:
    """Per-layer costs of one sample, in execution order."""

    layers: list[LayerCost] = field(default_factory=list)

    def select(self, prefix: str | None) -> list[LayerCost]:
        """Layers of the subtree `prefix` ('blocks.3.' also matches a layer named 'blocks.3')."""
        if prefix is None:
            return list(self.layers)
        root = prefix.rstrip(".")
        return [l for l in self.layers if l.name == root or l.name.startswith(root + ".")]

    def total(self, prefix: str | None = None) -> dict:
        ls = self.select(prefix)
        return {"macs": sum(l.macs for l in ls), "bitops": sum(l.bitops for l in ls),
                "dram_bytes": sum(l.weight_bytes + l.in_bytes + l.out_bytes for l in ls)}

    def macs_by_bits(self, prefix: str | None = None) -> dict[tuple[int, int], int]:
        out: dict[tuple[int, int], int] = defaultdict(int)
        for l in self.select(prefix):
            out[(l.weight_bits, l.act_bits)] += l.macs
        return dict(out)


def bits_of(m: nn.Module) -> tuple[int, int]:
    return int(getattr(m, "weight_bits", FP_BITS)), int(getattr(m, "act_bits", FP_BITS))


def layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one sample through a conv or linear layer, from the output actually produced."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        per_out = (m.in_channels // m.groups) * kh * kw
        return int(out[0].numel() * per_out)
    if isinstance(m, nn.Linear):
        return int(out[0].numel() * m.in_features)
    return 0


def profile_model(model: nn.Module, sample: torch.Tensor, act_bytes_hook=None) -> CostProfile:
    """Run one sample through the model (all branches, exit heads included) and record each layer.

    `act_bytes_hook(name, module, tensor, default_bytes) -> bytes` lets feature-map compression
    report the bytes it really moves for a layer's output.
    """
    prof = CostProfile()
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def hook(m, inp, out):
        wb, ab = bits_of(m)
        w_bytes = m.weight.numel() * wb / 8 + (m.bias.numel() * 4 if m.bias is not None else 0)
        in_bytes = inp[0][0].numel() * ab / 8
        out_bytes = out[0].numel() * 4.0
        if act_bytes_hook is not None:
            out_bytes = act_bytes_hook(names[m], m, out, out_bytes)
        prof.layers.append(LayerCost(names[m], layer_macs(m, out), wb, ab, w_bytes, in_bytes, out_bytes))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook))
    run_hooked_once(model, sample, handles)
    return prof


def run_hooked_once(model: nn.Module, sample: torch.Tensor, handles: list) -> None:
    """One sample through the model in eval mode without gradients, then the hooks are removed and
    the train/eval mode restored: how every walker of the model (costs, codec points) reads it."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def _step_ids(model: nn.Module) -> set[int]:
    """Learned quantizer step sizes (LSQ): scales, counted as the fixed ones are (or not at all), not weights."""
    return {id(p) for m in model.modules() for p in (m.step_sizes() if hasattr(m, "step_sizes") else ())}


def count_params(model: nn.Module) -> int:
    steps = _step_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in steps)


def size_bytes(model: nn.Module) -> int:
    """Bytes to store the model at its stored precision: quantized weights at their bits (plus one
    fp32 scale per output channel), everything else (biases, BN, FP layers) at 32 bits."""
    total = 0.0
    quant_weights = _step_ids(model)
    for m in model.modules():
        if hasattr(m, "weight_bits") and isinstance(m, (nn.Conv2d, nn.Linear)):
            total += m.weight.numel() * m.weight_bits / 8 + m.weight.shape[0] * 4
            quant_weights.add(id(m.weight))
    for p in model.parameters():
        if id(p) not in quant_weights:
            total += p.numel() * 4
    for name, b in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            total += b.numel() * 4
    return int(round(total))
