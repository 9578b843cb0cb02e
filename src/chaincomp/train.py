"""Task-aware training and evaluation loops (classification, segmentation, super-resolution).

Multi-output models (exit networks) train on the weighted sum of every output's loss; a custom
loss (distillation) replaces the task loss. A loss that turns NaN/Inf restores the last good
weights and raises DivergenceError naming the stage and step.

Device: the model runs on `data.device` for the length of a fit or an evaluation and is handed back
where it was, so stages, the ledger and checkpoints never see a device. On a GPU the loop never waits
for the host per step: the loss is summed on the device and read (and checked for NaN/Inf) every
`CHECK_EVERY` steps; on the CPU it is checked every step, as before.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import faults, progress
from .data.base import Split, TaskData
from .errors import DivergenceError, UserError
from .exits.model import ExitNetwork
from .exits.rules import choose_exits, gather_outputs
from .qmodules import is_quantized, step_sizes

LossFn = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]
CHECK_EVERY = 50   # steps between reads of the loss on a GPU (each read waits for the device)


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device, channels_last: bool = False):
    """Run `model` on `device`, channels_last on CUDA or where asked (`channels_last: true` on the CPU:
    oneDNN's convolutions train up to 1.2x faster so on a 2-core AVX2 EPYC, benchmarks/train_cpu.md), then
    put it back where it was, contiguous. A no-op on the CPU unless channels_last is asked."""
    home = next((p.device for p in model.parameters()), device)
    if not channels_last and (device == home or (device.type == "cpu" and home.type == "cpu")):
        yield model
        return
    fmt = torch.channels_last if channels_last or device.type == "cuda" else torch.contiguous_format
    model.to(device, memory_format=fmt)
    try:
        yield model
    finally:
        model.to(home, memory_format=torch.contiguous_format)


def _inputs(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    last = channels_last or device.type == "cuda"
    return x.contiguous(memory_format=torch.channels_last) if last and x.dim() == 4 else x


def _autocast(data: TaskData, model: nn.Module):
    """bf16 autocast for float models when the recipe asks (`amp: true`) and it helps on the device
    (`TaskData.place`: CUDA, or a CPU with AMX); quantized layers keep fp32 so their integer grids stay exact."""
    if data.amp and not is_quantized(model):
        return torch.autocast(data.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def task_loss(data: TaskData, out: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    if data.task == "classification":
        return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if data.task == "segmentation":
        return F.cross_entropy(out, y, ignore_index=data.ignore_index if data.ignore_index is not None else -100)
    return F.l1_loss(out, y)


def as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def multi_loss(data: TaskData, outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum of the task loss of every output (exits and final), as the papers train exits."""
    return sum(task_loss(data, o, y, label_smoothing) for o in outs)


def resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images scaled so their shorter side is `size` (progressive resizing: early epochs at a lower resolution
    cost about (size/native)^2 of a full one; a pooled head makes the network indifferent to the size).
    Antialiased bilinear, so a smaller image is a faithful view of the same picture."""
    if size is None or x.dim() != 4 or min(x.shape[-2:]) == size:
        return x
    h, w = x.shape[-2:]
    out = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    return F.interpolate(x, size=out, mode="bilinear", antialias=True, align_corners=False)


class WeightAverage:
    """Exponential moving average of a model's float parameters and buffers (BN statistics), started at the first
    step's weights: avg <- decay * avg + (1 - decay) * w after every optimizer step. By hand because torch's
    `AveragedModel` reads its step counter on the host at every update (a GPU synchronisation per step, which the
    training loop avoids) and averages integer buffers (BN's batch counters) as if they were weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.live = [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        self.avg: list[torch.Tensor] = []

    def update(self) -> None:
        if not self.avg:
            self.avg = [t.clone() for t in self.live]
        else:
            torch._foreach_lerp_(self.avg, self.live, 1.0 - self.decay)

    def copy_to_model(self) -> None:
        if self.avg:
            torch._foreach_copy_(self.live, self.avg)


@dataclass
class FitConfig:
    epochs: int
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    label_smoothing: float = 0.0
    resize: tuple[tuple[int, int], ...] = ()   # (epochs, size) phases first; the rest at the data's own size
    ema: float = 0.0   # decay of the weight average the fit ends on (0: none)

    @classmethod
    def of(cls, budget, epochs: int | None = None) -> "FitConfig":
        """From any recipe section with epochs, lr, batch_size, weight_decay and optimizer fields (and, on a
        baseline, label_smoothing, resize and ema)."""
        phases = tuple((p.epochs, p.size) for p in getattr(budget, "resize", ()))
        return cls(budget.epochs if epochs is None else epochs, budget.lr, budget.batch_size, budget.weight_decay,
                   budget.optimizer, getattr(budget, "label_smoothing", 0.0), phases, getattr(budget, "ema", 0.0))

    def size_at(self, epoch: int) -> int | None:
        """The input size of 0-based `epoch` under `resize`; None for the data's own size."""
        for n, size in self.resize:
            if epoch < n:
                return size
            epoch -= n
        return None


def fit(model: nn.Module, data: TaskData, cfg: FitConfig, *, loss_fn: LossFn | None = None, stage: str = "train",
        seed: int = 0, params=None) -> dict:
    """Train with a cosine schedule; returns the loss history. Deterministic for a given seed."""
    if cfg.epochs <= 0:
        return {"loss": []}
    if (cfg.label_smoothing or cfg.resize) and data.task != "classification":
        raise UserError(f"baseline.label_smoothing / baseline.resize: classification only (this data is "
                        f"{data.task}); remove them from the recipe")
    with on_device(model, data.device, data.channels_last):   # before the optimizer is built, so its state is made there
        return _fit(model, data, cfg, loss_fn, stage, seed, params)


def _fit(model, data, cfg, loss_fn, stage, seed, params) -> dict:
    gen = torch.Generator().manual_seed(seed)   # on the CPU on every device: the same batches everywhere
    torch.manual_seed(seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    steps = {id(p) for p in step_sizes(model)}
    learned = [p for p in params if id(p) in steps]   # kept positive after every update (below)
    if learned:   # learned step sizes (LSQ) take no weight decay: it would shrink them
        groups = [{"params": [p for p in params if id(p) not in steps]},
                  {"params": learned, "weight_decay": 0.0}]
        params = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data.train) / cfg.batch_size)) if data.train.stacked else len(data.train)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15,
                                                anneal_strategy="cos", div_factor=10, final_div_factor=100)
    dev = data.device
    check = 1 if dev.type == "cpu" else CHECK_EVERY
    good = copy.deepcopy(model.state_dict())
    history, step = [], 0
    model.train()
    amp = _autocast(data, model)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    with progress.task(f"{stage}", total) as bar:
        for epoch in range(cfg.epochs):
            run = torch.zeros((), dtype=torch.float64, device=dev)   # summed where the loss is, read per epoch
            worst = torch.zeros((), dtype=torch.bool, device=dev)
            size = cfg.size_at(epoch)
            for x, y in data.train.batches(cfg.batch_size, shuffle=True, generator=gen, device=dev):
                if data.augment is not None:
                    x, y = data.augment(x, y, gen)
                x = _inputs(resized(x, size), dev, data.channels_last)
                with amp:
                    outs = as_list(model(x))
                    loss = loss_fn(outs, y, x) if loss_fn else multi_loss(data, outs, y, cfg.label_smoothing)
                if faults.nan("loss"):
                    loss = loss * float("nan")
                worst |= ~torch.isfinite(loss.detach())
                if (step + 1) % check == 0 and bool(worst):
                    model.load_state_dict(good)
                    raise DivergenceError(stage, step, float(loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if learned:   # a step size pushed through zero would flip or zero its layer's codes
                    with torch.no_grad():
                        torch._foreach_clamp_min_(learned, 1e-8)
                sched.step()
                if ema is not None:
                    ema.update()
                step += 1
                faults.point("train_step")
                run += loss.detach()
                bar.advance(1)
            if bool(worst):
                model.load_state_dict(good)
                raise DivergenceError(stage, step, float("nan"))
            history.append(float(run) / steps_per_epoch)
            if not progress.interactive():  # logs and CI get a line per epoch instead of a bar
                progress.log(f"{stage}: epoch {epoch + 1}/{cfg.epochs} loss {history[-1]:.4f}")
            if bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
                good = copy.deepcopy(model.state_dict())
            else:
                model.load_state_dict(good)
                raise DivergenceError(stage, step, float("nan"))
    if ema is not None:   # the average is the trained model (a finite average of finite weights)
        ema.copy_to_model()
    return {"loss": history}


@dataclass
class EvalResult:
    metric: float
    exit_index: torch.Tensor | None = None   # per-sample output index (exit networks)
    n: int = 0


def predict(model: nn.Module, split: Split, batch_size: int = 256,
            device: torch.device | None = None) -> list[list[torch.Tensor]]:
    """Every output of the model for every batch (eval mode, no grad), on `device`; answers on the CPU."""
    dev = device or torch.device("cpu")
    was = model.training
    model.eval()
    res = []
    with torch.no_grad(), on_device(model, dev):
        for x, _ in split.batches(batch_size, device=dev):
            res.append(as_list(model(_inputs(x, dev))))
    model.train(was)
    if dev.type != "cpu":   # one copy back after every batch was queued
        res = [[o.float().cpu() for o in outs] for outs in res]
    return res


def outputs_and_targets(model: nn.Module, split: Split, batch_size: int = 256, device: torch.device | None = None):
    outs = predict(model, split, batch_size, device)
    ys = [y for _, y in split.batches(batch_size)]
    return outs, ys


def evaluate(model: nn.Module, data: TaskData, split: str = "test", rule: dict | None = None,
             batch_size: int = 256) -> EvalResult:
    """The task metric on a split; exit networks answer through their exit rule (or `rule`)."""
    sp: Split = getattr(data, split)
    outs, ys = outputs_and_targets(model, sp, batch_size, data.device)
    exit_idx = None
    if isinstance(model, ExitNetwork):
        r = rule or model.exit_rule
        chosen = [choose_exits(o, r["criterion"], r["threshold"]) for o in outs]
        preds = [gather_outputs(o, c) for o, c in zip(outs, chosen)]
        exit_idx = torch.cat(chosen)
    else:
        preds = [o[-1] for o in outs]
    return EvalResult(metric_of(data, preds, ys), exit_idx, len(sp))


def metric_of(data: TaskData, preds: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    if data.task == "classification":
        return float((torch.cat(preds).argmax(-1) == torch.cat(ys)).double().mean() * 100)
    from . import metrics

    if data.task == "segmentation":
        miou = metrics.MeanIoU(data.num_classes, ignore_index=data.ignore_index)
        for p, y in zip(preds, ys):
            miou.update(p, y)
        return float(miou.compute())
    shave = data.scale or 0
    vals = [float(metrics.psnr_y(p.clamp(0, 1), y, shave)) for p, y in zip(preds, ys)]
    if data.train.stacked and preds and preds[0].shape[0] > 1:  # batched patches: per-image mean
        vals = [float(metrics.psnr_y(pi[None].clamp(0, 1), yi[None], shave))
                for p, y in zip(preds, ys) for pi, yi in zip(p, y)]
    return sum(vals) / max(1, len(vals))
