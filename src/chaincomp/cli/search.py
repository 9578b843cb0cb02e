"""`chaincomp search`: multi-objective search over order and degree. Argument parsing and printing only; the work is in studies/search.py."""
from __future__ import annotations

import argparse

from ..io import output_dir_for, prepare_output
from ..progress import log
from ..studies.order import study_recipe
from ..studies.search import run_search

def _cmd_search(args: argparse.Namespace) -> int:

    from . import with_device

    recipe, source = study_recipe(args.recipe)
    recipe = with_device(recipe, args)
    out = prepare_output(args.out or output_dir_for(f"{recipe.name}-search", "runs"))
    res = run_search(recipe, out, trials=args.trials, workers=args.workers, address=args.address,
                     sampler=args.sampler, source=source, objective=args.objective)
    for t in res["pareto"]:
        log(f"front: {t['order']} metric {t['metric']:.2f} BitOps {t['bitops']:.3g} (trial {t['number']})")
    log(f"results: {out / 'search.json'}  report: {out / 'search.md'}")
    return 0


def register(sub) -> None:
    from . import add_device

    p = sub.add_parser("search", help="multi-objective search over order and degree (metric up, BitOps down)")
    p.add_argument("recipe", nargs="?", help="recipe YAML or built-in name (default: digits, D P Q E, the order "
                   "study's scaled budget)")
    p.add_argument("--out", help="output folder (default: runs/<recipe name>-search); a rerun continues the study")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed study in --out (a rerun with the same recipe always continues: "
                        "finished trials are kept, running ones are dispatched again with their parameters)")
    p.add_argument("--trials", type=int, default=20, help="trials in the study (default 20)")
    p.add_argument("--address", help="Ray cluster address (needs chaincomp[ray]; default: a local Ray instance when Ray is "
                   "installed, else local worker processes)")
    p.add_argument("--workers", type=int, default=None,
                   help="trials in parallel (default: CPU count); 0 runs them one by one in this process")
    p.add_argument("--sampler", choices=["tpe", "nsga2"], default="tpe",
                   help="Optuna multi-objective sampler (default tpe: better on small budgets)")
    p.add_argument("--objective", default="bitops",
                   help="cost minimised beside the metric: bitops (default) or measured latency, "
                        "latency:RUNTIME:bBATCH:tTHREADS with RUNTIME ort or openvino (e.g. latency:ort:b1:t1)")
    add_device(p)
    p.set_defaults(func=_cmd_search)
