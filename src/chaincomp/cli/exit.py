"""`chaincomp exit`: Predictive Exit against early exit and the classic network. Argument parsing and printing only; the work is in studies/predictive_exit/."""
from __future__ import annotations

import argparse

from .. import progress
from ..io import output_dir_for, prepare_output
from ..studies.predictive_exit import (DEFAULT_RECIPE, WAYS, load_exit_recipe, run_exit, summary_line, ways_of,
                                       with_overrides)


def _cmd_exit(args: argparse.Namespace) -> int:
    from . import with_device

    cfg = with_overrides(load_exit_recipe(args.recipe), beta=args.beta, latency_ms=args.latency_ms,
                         platform=args.platform)
    cfg = with_device(cfg, args)
    out = prepare_output(args.out or output_dir_for(cfg.name, "runs"))
    res = run_exit(cfg, out, resume=args.resume)
    from rich.table import Table

    t = Table(title=f"{res['model']} on {res['dataset']}: beta {res['beta']:.4g}, platform {res['platform']}")
    for h in ("way", "top-1", "MACs (M)", "energy mJ (modelled)", "latency ms (measured)"):
        t.add_column(h, justify="left" if h == "way" else "right")
    ways = ways_of(res)
    for w, name in WAYS:
        r = ways[w]
        t.add_row(name, f"{r['metric']:.2f}", f"{r['macs_per_sample'] / 1e6:.3f}", f"{r['energy_j'] * 1e3:.4g}",
                  f"{r['latency_ms']:.3f}")
    progress.console.print(t)
    progress.console.print(summary_line(res))
    print(f"results: {out / 'exit.json'}  report: {out / 'exit.md'}")
    return 0


def register(sub) -> None:
    from . import add_device

    r = sub.add_parser("exit", help="Predictive Exit against early exit and the classic network (digits by default)")
    r.add_argument("recipe", nargs="?", help=f"exit recipe YAML or built-in name (default: {DEFAULT_RECIPE})")
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true",
                   help="reuse the network a killed (or earlier) run in --out trained with the same settings; "
                        "without it the run starts from scratch")
    r.add_argument("--latency-ms", type=float, help="latency limit per inference on the platform (modelled ms)")
    r.add_argument("--platform", help="platform profile: built-in name or YAML file (default: the recipe's)")
    r.add_argument("--beta", type=float, help="exit rule beta for predictive and max|logit| exit (skips calibration)")
    add_device(r)
    r.set_defaults(func=_cmd_exit)
