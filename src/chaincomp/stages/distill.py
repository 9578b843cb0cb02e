"""Knowledge distillation: a smaller student learns from the current model (Hinton et al. 2015).

loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * task loss.
The student keeps what earlier stages did: if the teacher has exits the student gets exits at the
same blocks; if the teacher is quantized the student trains at its bits; if the teacher's channels
were pruned (same zoo architecture), the student loses the same share of channels per layer, so
P -> D keeps the saving of P instead of starting again from the unpruned architecture.

Recipe:
    - technique: distill
      student: {name: null, width: 0.5}   # null name: the teacher's architecture, narrower
      alpha: 0.7
      temperature: 4.0
      epochs: 30
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_serializer
from torch import nn

from ..io import load_weights
from ..models import build_model, imported
from ..pruning import prune_to_shares, weighted_layers
from ..train import multi_loss, task_loss
from .base import Context, Stage, StageConfig
from .registry import register, replay


class StudentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = Field(None, description="zoo model; null keeps the teacher's architecture")
    width: float = Field(0.5, gt=0, le=8, description="channel width relative to the teacher's")
    import_: str | None = Field(None, alias="import", max_length=300, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                                description="your own student: package.module:callable (as model.import)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="the imported student's starting weights (.safetensors)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):   # recipes written before `import` keep their digest
        d = handler(self)
        return {k: v for k, v in d.items() if k not in ("import", "kwargs", "weights") or v}


class DistillConfig(StageConfig):
    technique: Literal["distill"] = "distill"
    student: StudentSpec = StudentSpec()
    alpha: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    lr: float = Field(0.05, gt=0, le=10)
    epochs: int = Field(20, ge=0, le=100_000)


def kd_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student_out / t, -1), F.softmax(teacher_out / t, -1), reduction="batchmean") * t * t


def _replay_exits(student: nn.Module, teacher: nn.Module, t: dict) -> dict:
    if t["type"] == "exits" and len(student.blocks) != len(teacher.blocks):
        # Same relative depth when the student has another number of blocks.
        n_t, n_s = len(teacher.blocks), len(student.blocks)
        t = {**t, "points": sorted({round(p * (n_s - 1) / max(1, n_t - 1)) for p in teacher.exit_points})}
    return t


def imported_student(teacher: nn.Module, spec: StudentSpec, sample: torch.Tensor) -> nn.Module:
    """Your own student (`import`), or the teacher's own architecture made uniformly narrower: every layer
    keeps `width` of the channels the teacher kept (channel pruning of a fresh copy; classifiers whole)."""
    arch = teacher.chaincomp_arch
    if spec.import_:
        weights = load_weights(spec.weights) if spec.weights else None
        student = imported.build({"import": spec.import_, "kwargs": dict(spec.kwargs),
                                  "input": [int(v) for v in sample.shape[1:]]}, weights, "distill.student")
        for t in arch["transforms"]:
            student = replay(student, _replay_exits(student, teacher, t), sample)
        return student
    student = build_model(**arch["model"])
    kept = pruned_shares(teacher, build_model(**arch["model"]))
    for t in arch["transforms"]:
        student = replay(student, t, sample)
    shares = {n: min(1.0, kept.get(n, 1.0) * spec.width) for n in weighted_layers(student)}
    if any(s < 1 for s in shares.values()):
        prune_to_shares(student, shares, sample)
    return student


def build_student(teacher: nn.Module, spec: StudentSpec, sample: torch.Tensor) -> nn.Module:
    arch = teacher.chaincomp_arch
    if imported.is_spec(arch["model"]) or spec.import_:
        return imported_student(teacher, spec, sample)
    base = dict(arch["model"])
    name = base.pop("name")
    teacher_width = float(base.pop("width", 1.0))
    if spec.name is not None and spec.name != name:
        name, width = spec.name, spec.width
    else:
        width = teacher_width * spec.width
    student = build_model(name, **base, width=width)
    for t in arch["transforms"]:
        if t["type"] == "exits" and len(student.blocks) != len(teacher.blocks):
            # Same relative depth when the student has another number of blocks.
            n_t, n_s = len(teacher.blocks), len(student.blocks)
            t = {**t, "points": sorted({round(p * (n_s - 1) / max(1, n_t - 1)) for p in teacher.exit_points})}
        student = replay(student, t, sample)
    if name == arch["model"]["name"]:
        kept = pruned_shares(teacher, build_model(name, **base, width=teacher_width))
        if kept:
            prune_to_shares(student, kept, sample)
    return student


def pruned_shares(teacher: nn.Module, unpruned: nn.Module) -> dict[str, float]:
    """Per conv/linear layer name, the share of output channels the teacher kept against the same
    zoo model unpruned; empty when nothing was pruned."""
    ref = weighted_layers(unpruned)
    shares = {}
    for n, m in weighted_layers(teacher).items():
        r = ref.get(n)  # an exit network keeps the zoo names (blocks.*, head.*); exit heads have none
        if r is not None and r.weight.shape[0] > m.weight.shape[0]:
            shares[n] = m.weight.shape[0] / r.weight.shape[0]
    return shares


@register
class Distill(Stage):
    technique = "distill"
    letter = "D"
    Config = DistillConfig
    studied = True
    rank = 0

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        c: DistillConfig = self.config
        data = ctx.data
        torch.manual_seed(ctx.seed * 1000 + ctx.stage_index)
        student = build_student(model, c.student, data.sample_input())
        teacher = model.eval().to(data.device)   # beside the student, on the run's device
        for p in teacher.parameters():
            p.requires_grad_(False)
        classification = data.task == "classification"

        def loss_fn(outs, y, x):
            with torch.no_grad():
                t_outs = teacher(x)
            t_outs = t_outs if isinstance(t_outs, list) else [t_outs]
            t_final = t_outs[-1]
            if not classification:  # regression/segmentation: match the teacher's output directly
                return multi_loss(data, outs, y) + c.alpha * sum(F.mse_loss(o, t_final) for o in outs)
            loss = 0.0
            for i, o in enumerate(outs):
                target = t_outs[i] if len(t_outs) == len(outs) else t_final
                loss = loss + c.alpha * kd_loss(o, target, c.temperature) + (1 - c.alpha) * task_loss(data, o, y)
            return loss

        ctx.fit(student, c.fit_config(), loss_fn=loss_fn)
        if hasattr(model, "exit_rule") and hasattr(student, "exit_rule"):
            student.exit_rule = dict(model.exit_rule)
        ctx.notes["student"] = student.chaincomp_arch["model"]
        return student
