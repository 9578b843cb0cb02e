"""`chaincomp order`: the pairwise order study. Argument parsing and printing only; the work is in studies/order.py."""
from __future__ import annotations

import argparse

from ..io import output_dir_for, prepare_output
from ..progress import log
from ..studies.order import MIN_TOL, POINTS_PER_DECADE, letters, run_order_study, study_recipe


def _cmd_order(args: argparse.Namespace) -> int:
    from . import with_device

    recipe, source = study_recipe(args.recipe)
    recipe = with_device(recipe, args)
    out = prepare_output(args.out or output_dir_for(f"{recipe.name}-order", "runs"))
    res = run_order_study(recipe, out, seeds=args.seeds, workers=args.workers, address=args.address,
                          insertion=args.insertion, perms=args.permutations, min_tol=args.tolerance,
                          rate=args.points_per_decade, source=source)
    for p in res["pairs"]:
        a, b = p["orders"]
        log(f"{letters(a['order'])} {a['metric']:.2f}/{a['bitops']:.3g} vs {letters(b['order'])} "
            f"{b['metric']:.2f}/{b['bitops']:.3g}: {p['winner']} ({p['rule']})")
    cyc = "; ".join("->".join(c["cycle"]) for c in res["cycles"]) or "none"
    log(f"order: {' -> '.join(res['order'])} ({res['order_letters']}); cycles: {cyc}; {res['seconds']:.0f} s")
    log(f"results: {out / 'order.json'}  report: {out / 'order.md'}")
    return 0


def register(sub) -> None:
    from . import add_device

    p = sub.add_parser("order", help="measure the order of the recipe's techniques pair by pair, sort topologically")
    p.add_argument("recipe", nargs="?", help="recipe YAML or built-in name (default: digits, D P Q E, scaled budget)")
    p.add_argument("--out", help="output folder (default: runs/<recipe name>-order); a rerun reuses finished chains")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed study in --out (a rerun with the same recipe always continues: "
                        "finished chains are reused, a chain that was running resumes from its last stage)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per order (default 1)")
    p.add_argument("--address", help="Ray cluster address (needs chaincomp[ray]; default: a local Ray instance when Ray is "
                   "installed, else local worker processes)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel chains (default: CPU count); 0 runs them one by one in this process")
    p.add_argument("--insertion", action="store_true", help="also check that a third technique between a pair keeps its order")
    p.add_argument("--permutations", action="store_true", help="also run every full order (brute force check)")
    p.add_argument("--tolerance", type=float, default=MIN_TOL, help=f"minimum tie tolerance in points (default {MIN_TOL})")
    p.add_argument("--points-per-decade", type=float, default=POINTS_PER_DECADE,
                   help="trade-off rate: metric points one decade of BitOps is worth (default 1)")
    add_device(p)
    p.set_defaults(func=_cmd_order)
