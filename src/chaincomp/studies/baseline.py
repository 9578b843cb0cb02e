"""`chaincomp train`: a recipe's baseline trained once into the baseline cache (see baselines.py), so
every later run, study, search, exit or fmc study naming the same data, model, budget and seed loads it."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import torch

from .. import baselines, progress
from ..device import describe
from ..recipe import Recipe


def train_once(recipe: Recipe, *, force: bool = False) -> dict:
    """Train (or with the same digest already cached and not `force`, just report) the baseline;
    returns its cache record plus `path` and `reused`."""
    from ..chain import placed, train_baseline
    from ..data import load_data
    from ..ledger import measure

    if recipe.model.weights:
        from ..errors import UserError
        raise UserError("model.weights: this recipe starts from given weights; there is no baseline to train")
    ident = baselines.of_recipe(recipe)
    d = baselines.digest(ident)
    wpath, jpath = baselines.paths(d)
    data = placed(load_data(recipe.data, recipe.seed), recipe)
    if not force and jpath.is_file():
        torch.manual_seed(recipe.seed)
        from ..data import model_kwargs
        from ..models import build_model
        model = build_model(recipe.model.name, width=recipe.model.width, **model_kwargs(data))
        meta = baselines.load_cached(model, ident, progress.log)
        if meta is not None:
            return {**meta, "path": str(wpath), "reused": True}
    t0 = time.perf_counter()
    model = train_baseline(recipe, data, reuse=False)
    seconds = time.perf_counter() - t0
    m = measure(model, data)
    record = {"recipe": recipe.name, "metric_name": data.metric_name, "metric": m["metric"],
              "bitops": m["bitops"], "params": m["params"], "seconds": round(seconds, 1),
              "device": describe(data.device), "amp": data.amp, "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = baselines.store(model, ident, record)
    progress.log(f"baseline: {data.metric_name} {m['metric']:.2f} in {seconds:.0f} s on {record['device']} -> {path}")
    return {"format": baselines.FORMAT, "digest": d, "identity": ident, **record, "path": str(path), "reused": False}
