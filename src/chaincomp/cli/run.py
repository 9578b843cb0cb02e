"""`chaincomp run`: a compression chain from a recipe. Argument parsing and printing only; the work is in chain.py."""
from __future__ import annotations

import argparse


def _cmd_run(args: argparse.Namespace) -> int:
    from ..chain import run_chain
    from ..io import output_dir_for, prepare_output
    from ..recipe import load_recipe
    from ..report import print_run_table

    from . import with_device

    recipe, text = load_recipe(args.recipe)
    recipe = with_device(recipe, args)
    out = prepare_output(args.out or output_dir_for(recipe.name, "runs"))
    results = run_chain(recipe, out, resume=args.resume, recipe_text=text)
    print_run_table(results)
    print(f"results: {out / 'results.json'}  report: {out / 'report.md'}")
    return 0


def register(sub) -> None:
    from . import add_device

    r = sub.add_parser("run", help="run a compression chain (default: digits, D -> P -> Q -> E)")
    r.add_argument("recipe", nargs="?", help="recipe YAML, or a built-in name (default: default)")
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out; with later stages of the recipe edited, keep the "
                        "unchanged earlier stages and rerun from the first edited one")
    add_device(r)
    r.set_defaults(func=_cmd_run)
