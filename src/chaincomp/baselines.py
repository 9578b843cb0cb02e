"""Baselines trained once: a cache keyed by the digest of what made the network.

Why: on a GPU a converged CIFAR-10 baseline is most of a study's cost, and every chain, order study,
search, exit or fmc study that names the same data, model, baseline budget and seed would train the
very same network again. `chaincomp train RECIPE` trains it once into
$CHAINCOMP_CACHE/baselines/<digest>.safetensors (+ .json: what made it, its test metric, where and
when); every command that would train that baseline loads it instead and says so. The digest leaves
out the device (a baseline trained on a GPU serves a CPU run) and includes `amp` only when it is on.
Files are written atomically (weights first, the JSON last: the JSON's presence means complete) and
read without pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from torch import nn

FORMAT = 1


def cache_dir() -> Path:
    """$CHAINCOMP_CACHE/baselines, else ~/.cache/chaincomp/baselines."""
    root = os.environ.get("CHAINCOMP_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "chaincomp") / "baselines"


def identity(data, model, baseline, seed: int, amp: bool = False) -> dict:
    """What a trained baseline depends on (the recipe sections themselves, pydantic models)."""
    m = model.model_dump(mode="json")
    ident = {"format": FORMAT, "data": data.model_dump(mode="json"),
             "model": {"name": m["name"], "width": m["width"]},
             "baseline": baseline.model_dump(mode="json"), "seed": seed}
    if amp:
        ident["amp"] = True
    return ident


def digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def of_recipe(recipe) -> dict:
    return identity(recipe.data, recipe.model, recipe.baseline, recipe.seed, getattr(recipe, "amp", False))


def paths(d: str) -> tuple[Path, Path]:
    base = cache_dir() / d
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def load_cached(model: nn.Module, ident: dict, log=None) -> dict | None:
    """Load the cached baseline of `ident` into `model`; its record, or None when there is none (or it
    no longer fits the model: then it is left alone and the caller trains)."""
    from .arch import load_into
    from .errors import UserError
    from .io import load_weights, read_json

    d = digest(ident)
    wpath, jpath = paths(d)
    if not (wpath.is_file() and jpath.is_file()):
        return None
    try:
        meta = read_json(jpath)
        if meta.get("identity") != ident:
            return None
        load_into(model, load_weights(wpath), f"cached baseline {wpath}")
    except (UserError, OSError, ValueError, KeyError, RuntimeError):
        return None         # a damaged or foreign cache entry: train instead
    if log:
        log(f"baseline: reused from the cache ({wpath}, digest {d}; trained {meta.get('date', '?')} on "
            f"{meta.get('device', '?')}, test {meta.get('metric_name', 'metric')} {meta.get('metric', float('nan')):.2f})")
    return meta


def store(model: nn.Module, ident: dict, record: dict) -> Path:
    """Write the baseline and its record into the cache; returns the weights path."""
    from .io import save_weights, write_json

    d = digest(ident)
    wpath, jpath = paths(d)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    save_weights(wpath, model.state_dict(), metadata={"baseline_digest": d})
    write_json(jpath, {"format": FORMAT, "digest": d, "identity": ident, **record})
    return wpath
