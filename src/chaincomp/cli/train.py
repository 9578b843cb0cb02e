"""`chaincomp train`: train a recipe's baseline once into the cache. Parsing and printing only; the work is in studies/baseline.py."""
from __future__ import annotations

import argparse


def _cmd_train(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..studies.baseline import train_once
    from . import with_device

    recipe, _ = load_recipe(args.recipe)
    rec = train_once(with_device(recipe, args), force=args.force)
    amp = " with bf16 autocast" if rec.get("amp") else ""
    how = "already cached" if rec["reused"] else f"trained in {rec['seconds']:.0f} s on {rec['device']}{amp}"
    print(f"baseline {rec['digest']}: {rec['metric_name']} {rec['metric']:.2f} ({how}) -> {rec['path']}")
    return 0


def register(sub) -> None:
    from . import add_device

    t = sub.add_parser("train", help="train a recipe's baseline once into the cache ($CHAINCOMP_CACHE/baselines); "
                       "every command naming the same baseline reuses it")
    t.add_argument("recipe", nargs="?", help="recipe YAML, or a built-in name (default: default)")
    t.add_argument("--force", action="store_true", help="train again even when the cache holds this baseline")
    add_device(t, "train")
    t.set_defaults(func=_cmd_train)
