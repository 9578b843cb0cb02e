"""The Python API: one line of intent.

    from chaincomp import compress
    result = compress("digits_cnn", "digits", chain=["distill", "prune", "quantize", "early_exit"])
    result.model, result.results["final"]["bitops_reduction"]
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from .chain import load_run, run_chain
from .data.base import TaskData
from .data.folders import from_datasets
from .errors import UserError
from .models.imported import allow_imports
from .recipe import parse_recipe


@dataclass
class Compressed:
    model: nn.Module
    results: dict
    out: Path


def compress(model: str | nn.Module = "digits_cnn", data: str | dict | tuple | TaskData = "digits",
             chain: list[str | dict] = (), *, out: str | Path | None = None, seed: int = 0,
             baseline: dict | None = None, width: float = 1.0, weights: str | None = None, resume: bool = False,
             allow_import: list[str] | tuple[str, ...] = (), device: str = "auto") -> Compressed:
    """Train (or load) a baseline and compress it with the chain; every entry of `chain` is a technique
    name or a stage mapping as in a recipe (e.g. {"technique": "quantize", "weight_bits": 4}).

    model: a zoo name, a recipe `model` mapping ({"import": "pkg.mod:Class", "kwargs": {...}}), or your
        own nn.Module (copied, never changed; used with the weights it has unless `baseline` asks for
        training; `resume=True` needs the same object again).
    data: a dataset name, a recipe `data` mapping ({"name": "imagefolder", "path": ...}), or a pair
        (train, test) of torch Datasets yielding (image_tensor, label).
    allow_import: modules whose factory functions an import spec (model or distill student) may call.
    device: auto | cpu | cuda | cuda:N, as the recipe's `device:`."""
    stages = [{"technique": c} if isinstance(c, str) else dict(c) for c in chain]
    td = data if isinstance(data, TaskData) else None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise UserError("data: give (train, test), two torch Datasets yielding (image_tensor, label)")
        td = from_datasets(*data, seed=seed)
    data_cfg = dict(data) if isinstance(data, dict) else {"name": data} if isinstance(data, str) else {"name": "digits"}
    given = {}
    if isinstance(model, nn.Module):
        given["model"] = copy.deepcopy(model).cpu()
        cls = type(model)
        model_cfg = {"import": f"{cls.__module__}:{cls.__qualname__}".replace("<", "_").replace(">", "_"),
                     "given": True}
        baseline = baseline if baseline is not None else {"epochs": 0}
    elif isinstance(model, dict):
        model_cfg = dict(model)
    else:
        model_cfg = {"name": model, "width": width, "weights": weights}
    recipe_obj = {"name": "api", "seed": seed, "device": device, "data": data_cfg, "model": model_cfg,
                  "baseline": baseline or {}, "chain": stages}
    recipe = parse_recipe(recipe_obj, "compress()")
    out = Path(out or tempfile.mkdtemp(prefix="chaincomp-"))
    text = yaml.safe_dump(recipe_obj, sort_keys=False)
    with allow_imports(allow_import, given):
        results = run_chain(recipe, out, resume=resume, recipe_text=text, data=td)
        return Compressed(load_run(out, data=td).model, results, out)
