"""The command line. User mistakes end as one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DivergenceError, UserError


def _cmd_run(args: argparse.Namespace) -> int:
    from .chain import run_chain
    from .recipe import load_recipe
    from .report import print_run_table

    recipe, text = load_recipe(args.recipe)
    out = Path(args.out or f"runs/{recipe.name}")
    results = run_chain(recipe, out, resume=args.resume, recipe_text=text)
    print_run_table(results)
    print(f"results: {out / 'results.json'}  report: {out / 'report.md'}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .recipe import check_recipe

    print(check_recipe(args.recipe, args.kind))
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    """Messages may quote user input (a recipe value, a file name): never let it break the one line."""
    return " ".join(str(e).split())


def build_parser() -> argparse.ArgumentParser:
    from .recipe import KINDS

    p = _Parser(prog="chaincomp", description="Compress CNNs with chains of techniques, measured.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a compression chain (default: digits, D -> P -> Q -> E)")
    r.add_argument("recipe", nargs="?", help="recipe YAML, or a built-in name (default: default)")
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out; with later stages of the recipe edited, keep the "
                        "unchanged earlier stages and rerun from the first edited one")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check", help="validate a recipe of any command without running it")
    c.add_argument("recipe", nargs="?", help="recipe YAML, or a built-in name")
    c.add_argument("--kind", choices=KINDS, help="the command the recipe is for (default: told by its keys: "
                   "chain -> chain, exits/predictive/energy/runtime -> exit, tasks/throughput -> fmc)")
    c.set_defaults(func=_cmd_check)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """Commands of other issues register themselves here as they land."""
    found = []
    for mod in ("order", "search", "exit_cli", "fmc_cli", "deploy_cli"):
        try:
            m = __import__(f"chaincomp.{mod}", fromlist=["register_cli"])
        except ImportError:
            continue
        if hasattr(m, "register_cli"):
            found.append(m.register_cli)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"chaincomp: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"chaincomp: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chaincomp: interrupted; finished stages are kept, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
