"""The command line: `chaincomp COMMAND ...`, one module per command in this package.

Each module holds argument parsing and printing only, and a `register(subparsers)` function; the work
is done by the runner, the studies and deploy. User mistakes end as one line on stderr and exit
status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import faults
from ..errors import DivergenceError, UserError, one_line

# The commands, in the order `--help` lists them: (module in this package, command names it registers).
COMMANDS = (("run", ("run",)), ("train", ("train",)), ("check", ("check",)), ("order", ("order",)), ("search", ("search",)),
            ("exit", ("exit",)), ("fmc", ("fmc",)), ("export", ("export",)), ("bench", ("bench",)))


class CommandUnavailable(Exception):
    """A command whose module failed to import: said by name when it is used, never silently missing."""


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def add_device(p: argparse.ArgumentParser, what: str = "train and evaluate") -> None:
    """`--device` for every command that trains or evaluates."""
    p.add_argument("--device", help=f"where to {what}: auto, cpu, cuda or cuda:N (default: the recipe's "
                   "`device:`, auto = the GPU when there is one)")


def with_device(cfg, args: argparse.Namespace):
    """The recipe with `--device` merged in at the edge; CUDA asked for where there is none (by the flag or
    by the recipe's `device:`) is one line, before any output folder is made."""
    from ..device import resolve

    if getattr(args, "device", None) is None:
        if getattr(cfg, "device", None) is not None:
            resolve(cfg.device, "recipe field device")
        return cfg

    resolve(args.device, "--device")
    return cfg.model_copy(update={"device": args.device.strip().lower()})


def _unavailable(module: str, err: BaseException):
    def fail(args: argparse.Namespace) -> int:
        raise CommandUnavailable(f"command '{args.command}' is unavailable: importing chaincomp.cli.{module} failed "
                                 f"({type(err).__name__}: {err}); reinstall with pip install -e .")
    return fail


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chaincomp", description="Compress CNNs with chains of techniques, measured.")
    sub = p.add_subparsers(dest="command", required=True)
    for module, names in COMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ImportError as e:     # a broken install: the command stays listed and says why it cannot run
            for name in names:
                # takes any arguments (no option prefix), so the error below is what the user sees
                q = sub.add_parser(name, help=f"(unavailable: {type(e).__name__})", add_help=False,
                                   prefix_chars="\0")
                q.add_argument("rest", nargs="*")
                q.set_defaults(func=_unavailable(module, e))
            continue
        mod.register(sub)
    for q in sub.choices.values():   # every command may read a recipe naming a model factory
        if "--allow-import" not in q._option_string_actions and q.prefix_chars == "-":
            q.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                           help="let recipes call factory functions of MODULE (repeatable); nn.Module classes "
                                "need no permission")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..models.imported import allow_imports

    try:
        faults.check_env()          # a garbage fault-injection value is one line, before any work
        with allow_imports(getattr(args, "allow_import", None) or ()):
            return args.func(args)
    except UserError as e:
        print(f"chaincomp: error: {one_line(e)}", file=sys.stderr)
        return 2
    except CommandUnavailable as e:
        print(f"chaincomp: error: {one_line(e)}", file=sys.stderr)
        return 1
    except DivergenceError as e:
        print(f"chaincomp: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chaincomp: interrupted; finished stages are kept, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
