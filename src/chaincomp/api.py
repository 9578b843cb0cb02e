"""The Python API: one line of intent.

    from chaincomp import compress
    result = compress("digits_cnn", "digits", chain=["distill", "prune", "quantize", "early_exit"])
    result.model, result.results["final"]["bitops_reduction"]
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from .chain import load_run, run_chain
from .data.base import TaskData
from .recipe import parse_recipe


@dataclass
class Compressed:
    model: nn.Module
    results: dict
    out: Path


def compress(model: str = "digits_cnn", data: str | TaskData = "digits", chain: list[str | dict] = (),
             *, out: str | Path | None = None, seed: int = 0, baseline: dict | None = None,
             width: float = 1.0, weights: str | None = None, resume: bool = False,
             device: str = "auto") -> Compressed:
    """Train (or load) a baseline and compress it with the chain; every entry of `chain` is a technique
    name or a stage mapping as in a recipe (e.g. {"technique": "quantize", "weight_bits": 4}); `device`:
    auto | cpu | cuda | cuda:N, as the recipe's `device:`."""
    stages = [{"technique": c} if isinstance(c, str) else dict(c) for c in chain]
    data_cfg = {"name": data} if isinstance(data, str) else {"name": "digits"}
    recipe_obj = {"name": "api", "seed": seed, "device": device, "data": data_cfg,
                  "model": {"name": model, "width": width, "weights": weights},
                  "baseline": baseline or {}, "chain": stages}
    recipe = parse_recipe(recipe_obj, "compress()")
    out = Path(out or tempfile.mkdtemp(prefix="chaincomp-"))
    text = yaml.safe_dump(recipe_obj, sort_keys=False)
    td = data if isinstance(data, TaskData) else None
    results = run_chain(recipe, out, resume=resume, recipe_text=text, data=td)
    return Compressed(load_run(out, data=td).model, results, out)
