"""`chaincomp fmc`: feature-map compression (ASC) against baselines on real tasks. Argument parsing and printing only; the work is in studies/feature_maps.py."""
from __future__ import annotations

import argparse

from ..io import output_dir_for, prepare_output
from ..studies.feature_maps import DEFAULT_RECIPE, load_fmc_recipe, run_fmc


def _cmd_fmc(args: argparse.Namespace) -> int:
    from . import with_device

    cfg = with_device(load_fmc_recipe(args.recipe), args)
    out = prepare_output(args.out or output_dir_for(cfg.name, "runs"))
    res = run_fmc(cfg, out, resume=args.resume)
    for r in res["tasks"]:
        ft = f" fine-tuned {r['finetune_epochs']} ep" if r.get("finetune_epochs") else ""
        print(f"{r['dataset']} {r['model']} [{r['codec']}{ft}] {r['bits_in']}-bit: {r['metric_name']} raw {r['metric_raw']:.3f}  "
              f"CBR {r['metric_cbr']:.3f} @ {r['ratio_cbr']:.2f}x  VBR {r['metric_vbr']:.3f} @ {r['ratio_vbr']:.2f}x")
    print(f"results: {out / 'fmc.json'}  report: {out / 'fmc.md'}")
    return 0


def register(sub) -> None:
    from . import add_device

    r = sub.add_parser("fmc", help="feature-map compression (ASC) vs baselines on real tasks (digits + SR by default)")
    r.add_argument("recipe", nargs="?", help=f"fmc recipe YAML or built-in name (default: {DEFAULT_RECIPE})")
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true",
                   help="reuse the tasks a killed (or earlier) run in --out finished with the same settings; "
                        "without it every task runs again")
    add_device(r)
    r.set_defaults(func=_cmd_fmc)
