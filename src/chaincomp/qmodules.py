"""Quantized layers shared by every technique that must keep or add bits.

Written by hand because the ledger needs exact arbitrary bit widths (1 to 8, weights and
activations separately) with a straight-through estimator, and torch.ao only offers 8-bit
observers. Weights: symmetric, per-channel scales from max-abs or an MSE-optimal clip, computed
from the weight itself (no stored per-channel buffer, so channel pruning stays consistent).
Activations: one scale per layer, calibrated (min-max, percentile, MSE) and tracked during QAT.
Or, with `scales: lsq`, both are learned step sizes (LSQ, Esser et al., ICLR 2020): nn.Parameters
initialised from those calibrated scales and trained with the weights, because at 1-2 bits a scale
chosen by an error criterion is not the one that keeps accuracy.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

_CLIP_GRID = torch.linspace(0.35, 1.0, 14)
_GRIDS: dict = {}


def _clip_grid(device: torch.device) -> torch.Tensor:
    """The clip ratios on `device`, copied there once (a copy per forward would make a GPU wait)."""
    if device.type == "cpu":
        return _CLIP_GRID
    if device not in _GRIDS:
        _GRIDS[device] = _CLIP_GRID.to(device)
    return _GRIDS[device]


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float | torch.Tensor) -> torch.Tensor:
    """x in the forward pass, g * dL/dx in the backward: LSQ's g = 1/sqrt(N * Q_P) keeps a step size's
    update in proportion to its value (unscaled, it summed N gradients and jumped). The forward value is
    x exactly (x + 0), so the step the model computes with is the one export and the ledger read."""
    y = x * g
    return x.detach() + (y - y.detach())


def weight_levels(bits: int) -> int:
    """Largest integer code of a symmetric signed weight at `bits` (1 bit: codes -1 and +1)."""
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool, method: str) -> torch.Tensor:
    """Scale s so that w ~ s * q with integer q in [-L, L]; shape broadcastable to w."""
    flat = w.detach().reshape(w.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
    shape = (-1,) + (1,) * (w.dim() - 1) if per_channel else (1,) * w.dim()
    if bits == 1:  # binary weights: s = mean |w| minimises the L2 error of s * sign(w)
        return flat.abs().mean(1).clamp_min(1e-8).reshape(shape)
    levels = weight_levels(bits)
    maxabs = flat.abs().amax(1).clamp_min(1e-8)
    if method == "maxabs":
        return (maxabs / levels).reshape(shape)
    # MSE: try clip ratios and keep the one with least squared error per channel (vectorised).
    scales = maxabs[None, :] * _clip_grid(w.device)[:, None] / levels              # (G, C)
    q = torch.clamp(torch.round(flat[None] / scales[..., None]), -levels, levels) * scales[..., None]
    err = ((q - flat[None]) ** 2).sum(-1)                                           # (G, C)
    best = err.argmin(0)
    return scales.gather(0, best[None]).squeeze(0).reshape(shape)


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool = True, method: str = "mse") -> torch.Tensor:
    """Fake-quantized weight (float values s * q), gradients straight through."""
    s = weight_scale(w, bits, per_channel, method)
    if bits == 1:
        return w + (torch.where(w >= 0, s, -s) - w).detach()
    levels = weight_levels(bits)
    return torch.clamp(_ste_round(w / s), -levels, levels) * s


def lsq_weight(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantized weight with a learned step (broadcastable to w): the step's gradient is LSQ's
    (round(w/s) - w/s inside the range, the clip level outside), scaled by 1/sqrt(N_per_step * Q_P)."""
    levels = weight_levels(bits)
    s = grad_scale(step, (w.numel() / step.numel() * levels) ** -0.5)
    if bits == 1:   # codes -1/+1: d/ds = sign(w); w straight through, as in the fixed-scale binary path
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * s + (w - w.detach())
    return _clip_round(w, s, -levels, levels)


def _clip_round(x: torch.Tensor, s: torch.Tensor, lo, hi) -> torch.Tensor:
    """LSQ's order, clip then round (same values as round then clip): d/ds is exactly the clip level
    beyond the range, where rounding first would give round(v) - v up to half a step past it."""
    return _ste_round(torch.clamp(x / s, lo, hi)) * s


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def quantize_act(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool | torch.Tensor) -> torch.Tensor:
    """Uniform activation quantization with a straight-through gradient inside the clip range. `signed`
    may be a bool tensor (a layer's buffer): the clip bounds are then chosen on the device, unread."""
    if isinstance(signed, torch.Tensor):
        lo_s, hi_s = act_range(bits, True)
        lo_u, hi_u = act_range(bits, False)
        lo = torch.where(signed, lo_s, lo_u).to(x.dtype)
        hi = torch.where(signed, hi_s, hi_u).to(x.dtype)
        return torch.clamp(_ste_round(x / scale), lo, hi) * scale
    lo, hi = act_range(bits, signed)
    return torch.clamp(_ste_round(x / scale), lo, hi) * scale


def lsq_act(x: torch.Tensor, step: torch.Tensor, bits: int, signed: torch.Tensor) -> torch.Tensor:
    """Activations at a learned step, its gradient scaled by 1/sqrt(N_F * Q_P) (N_F: features per sample);
    Q_P and the bounds follow the layer's `signed` buffer on the device, unread."""
    (lo_s, hi_s), (lo_u, hi_u) = act_range(bits, True), act_range(bits, False)
    n = x[0].numel() if x.dim() > 1 else x.numel()
    s = grad_scale(step, torch.where(signed, (n * hi_s) ** -0.5, (n * hi_u) ** -0.5))
    lo = torch.where(signed, float(lo_s), float(lo_u)).to(x.dtype)
    hi = torch.where(signed, float(hi_s), float(hi_u)).to(x.dtype)
    return _clip_round(x, s, lo, hi)


def calibrate_scale(samples: torch.Tensor, bits: int, signed: bool, method: str) -> float:
    """Activation scale from observed values: min-max, 99.99th percentile, or MSE-optimal clip."""
    a = samples.detach().flatten().float()
    a = a.abs() if signed else a.clamp_min(0)
    hi = act_range(bits, signed)[1]
    top = float(a.max()) if a.numel() else 1.0
    if method == "percentile":
        k = max(1, int(0.9999 * a.numel()))
        top = float(a.kthvalue(k).values) if a.numel() > 1 else top
    elif method == "mse":
        x = samples.detach().flatten().float()
        if x.numel() > 200_000:
            x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
        best, best_err = top, float("inf")
        for r in torch.linspace(0.2, 1.0, 33).tolist():
            s = max(top * r, 1e-8) / hi
            err = float(((quantize_act(x, torch.tensor(s), bits, signed) - x) ** 2).mean())
            if err < best_err:
                best, best_err = top * r, err
        top = best
    return max(top, 1e-8) / hi


@dataclass
class QuantSpec:
    """Bits of one layer; the ledger reads these."""

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    weight_method: str = "mse"
    scales: str = "fixed"   # fixed | lsq


class _QuantMixin:
    """Shared state of quantized conv and linear layers."""

    def _init_quant(self, spec: QuantSpec) -> None:
        self.weight_bits = spec.weight_bits
        self.act_bits = spec.act_bits
        self.per_channel = spec.per_channel
        self.weight_method = spec.weight_method
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.register_buffer("act_signed", torch.tensor(True))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observe: list[torch.Tensor] | None = None  # set during calibration
        self.act_momentum = 0.05
        self.scales = "fixed"
        if spec.scales != "fixed":
            self.set_scales(spec.scales)

    def spec(self) -> QuantSpec:
        return QuantSpec(self.weight_bits, self.act_bits, self.per_channel, self.weight_method, self.scales)

    def set_scales(self, mode: str) -> None:
        """`lsq`: act_scale becomes a Parameter (same state-dict key, so export and the ledger read it as
        before) and weight_step one per output channel, initialised from the weight's fixed scale at the
        layer's bits. `fixed`: back to a buffer, the weight's scale computed from the weight again."""
        a = self.act_scale.detach().clone()
        self._parameters.pop("act_scale", None)
        self._buffers.pop("act_scale", None)
        self._parameters.pop("weight_step", None)
        if mode == "lsq":
            self.act_scale = nn.Parameter(a)
            self.weight_step = nn.Parameter(
                weight_scale(self.weight, self.weight_bits, self.per_channel, self.weight_method).clone())
        else:
            self.register_buffer("act_scale", a)
        self.scales = mode

    def step_sizes(self) -> list[nn.Parameter]:
        """The learned step sizes (LSQ), none with fixed scales."""
        return [self.weight_step, self.act_scale] if self.scales == "lsq" else []

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe is not None:
            self.observe.append(x.detach().flatten()[:: max(1, x.numel() // 20000)].clone())
            return x
        if self.scales == "lsq":
            if self.training and not getattr(self, "_lsq_seen", False):   # a host flag, no tensor read:
                self._track(x.detach(), learned=True)    # an uncalibrated layer (an exit head) starts at max|x|
                self._lsq_seen = True
            return lsq_act(x, self.act_scale, self.act_bits, self.act_signed)
        if self.training:
            self._track(x.detach())
        return quantize_act(x, self.act_scale, self.act_bits, self.act_signed)

    @torch.no_grad()
    def _track(self, x: torch.Tensor, learned: bool = False) -> None:
        """Track the range during QAT (an EMA of the max; the first batch sets it when uncalibrated),
        in tensor ops on the layer's device: never read on the host, so a GPU never waits per layer.
        The arithmetic is the host version's (max in float32, the new scale in float64, the EMA in the
        buffer's float32), so the CPU gives bit-identical scales."""
        lo, hi = torch.aminmax(x)                  # one pass: max|x| = max(hi, -lo), max(x, 0) = max(hi, 0)
        signed = torch.where(self.calibrated, self.act_signed, lo < 0)
        top = torch.where(signed, torch.maximum(hi, -lo), hi.clamp_min(0)).double()
        levels = torch.where(signed, act_range(self.act_bits, True)[1], act_range(self.act_bits, False)[1])
        new = top.clamp_min(1e-8) / levels
        ema = (self.act_scale if learned    # LSQ: a calibrated step is learned, not tracked
               else self.act_scale * (1 - self.act_momentum) + (self.act_momentum * new).to(self.act_scale.dtype))
        self.act_scale.copy_(torch.where(self.calibrated, ema, new.to(self.act_scale.dtype)))
        self.act_signed.copy_(signed)
        self.calibrated.fill_(True)

    def quant_weight(self) -> torch.Tensor:
        if self.scales == "lsq":
            return lsq_weight(self.weight, self.weight_step, self.weight_bits)
        return quantize_weight(self.weight, self.weight_bits, self.per_channel, self.weight_method)

    def integer_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer codes, per-channel scale): what an integer runtime stores."""
        s = (self.weight_step.detach() if self.scales == "lsq"
             else weight_scale(self.weight, self.weight_bits, self.per_channel, self.weight_method))
        q = torch.round(self.quant_weight().detach() / s)
        return q, s


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def __init__(self, *args, spec: QuantSpec = QuantSpec(), **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    def __init__(self, *args, spec: QuantSpec = QuantSpec(), **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


QUANT_TYPES = (QuantConv2d, QuantLinear)


def _to_quant(m: nn.Module, spec: QuantSpec) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        q = QuantConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                        m.bias is not None, m.padding_mode, spec=spec)
    else:
        q = QuantLinear(m.in_features, m.out_features, m.bias is not None, spec=spec)
    q.weight = m.weight
    if m.bias is not None:
        q.bias = m.bias
    q.train(m.training)
    return q


@dataclass
class QuantPlan:
    """Which bits every conv/linear layer gets: defaults, first/last policy, per-layer overrides (globs)."""

    weight_bits: int = 8
    act_bits: int = 8
    first_last_bits: int | None = 8
    per_channel: bool = True
    weight_method: str = "mse"
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    scales: str = "fixed"   # fixed | lsq (learned step sizes)

    def to_dict(self) -> dict:
        """Without `scales` when fixed: architecture records written before LSQ stay as they were."""
        d = asdict(self)
        if d["scales"] == "fixed":
            del d["scales"]
        return d


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _first_last(model: nn.Module, names: list[str]) -> set[str]:
    """The input layer and every output classifier (final head and exit heads) of the model."""
    if not names:
        return set()
    ends = {names[0]}
    for prefix in ("head", "exits."):
        heads = [n for n in names if n.startswith(prefix)]
        if prefix == "head" and heads:
            ends.add(heads[-1])
        elif heads:  # last linear of every exit head
            by_exit: dict[str, str] = {}
            for n in heads:
                by_exit[n.split(".")[1]] = n
            ends.update(by_exit.values())
    if not any(n.startswith("head") for n in names):
        ends.add(names[-1])
    return ends


def apply_quant(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """Replace every Conv2d/Linear by its quantized twin (in place), following the plan."""
    layers = quantizable_layers(model)
    names = [n for n, _ in layers]
    ends = _first_last(model, names) if plan.first_last_bits else set()
    for name, m in layers:
        wb, ab = plan.weight_bits, plan.act_bits
        if name in ends:
            wb, ab = max(wb, plan.first_last_bits), max(ab, plan.first_last_bits)
        for pattern, o in plan.overrides.items():
            if fnmatch.fnmatch(name, pattern):
                wb, ab = o.get("weight_bits", wb), o.get("act_bits", ab)
        spec = QuantSpec(wb, ab, plan.per_channel, plan.weight_method, plan.scales)
        if isinstance(m, QUANT_TYPES):
            m.weight_bits, m.act_bits, m.per_channel, m.weight_method = wb, ab, plan.per_channel, plan.weight_method
            if plan.scales != "fixed" or m.scales != "fixed":   # steps restart from the weight at the new bits
                m.set_scales(plan.scales)
            continue
        _set_module(model, name, _to_quant(m, spec))
    return model


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANT_TYPES) for m in model.modules())


def plan_of(model: nn.Module) -> QuantPlan | None:
    """The plan a quantized model was made with (read back from its architecture record)."""
    for t in getattr(model, "chaincomp_arch", {}).get("transforms", []):
        if t["type"] == "quantize":
            return QuantPlan(**t["plan"])
    return None


def quantize_like(module: nn.Module, reference: nn.Module, name_prefix: str = "") -> nn.Module:
    """Quantize a new module (an exit head, a student) with the bits of a quantized reference model."""
    plan = plan_of(reference)
    if plan is None:
        return module
    apply_quant(module, QuantPlan(plan.weight_bits, plan.act_bits, None, plan.per_channel, plan.weight_method,
                                  scales=plan.scales))
    return module


def step_sizes(model: nn.Module) -> list[nn.Parameter]:
    """Every learned step size of the model (LSQ): the optimizer gives them no weight decay."""
    return [p for m in model.modules() if isinstance(m, QUANT_TYPES) for p in m.step_sizes()]


def drop_out_channels(m: nn.Module, idxs: list[int]) -> None:
    """Remove output channels `idxs` from a layer's learned per-channel steps, as channel pruning removes
    them from its weight (a fixed scale is computed from the weight and needs nothing)."""
    if isinstance(m, QUANT_TYPES) and m.scales == "lsq" and m.per_channel:
        keep = sorted(set(range(m.weight_step.shape[0])) - set(int(i) for i in idxs))
        m.weight_step = nn.Parameter(m.weight_step.detach()[keep].clone())


def calibrate(model: nn.Module, batches, bits_method: str = "minmax") -> None:
    """Post-training calibration of every activation scale from a few batches."""
    qs = [m for m in model.modules() if isinstance(m, QUANT_TYPES)]
    for m in qs:
        m.observe = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m in qs:
        obs = torch.cat(m.observe) if m.observe else torch.zeros(1)
        m.observe = None
        signed = bool((obs < 0).any())
        with torch.no_grad():   # act_scale may be a learned step (a Parameter)
            m.act_signed.fill_(signed)
            m.act_scale.fill_(calibrate_scale(obs, m.act_bits, signed, bits_method))
            m.calibrated.fill_(True)
    model.train(was)
