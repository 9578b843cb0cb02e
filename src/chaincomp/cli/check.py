"""`chaincomp check`: validate a recipe of any command without running anything.

Each kind is validated by the very function its command calls before any work starts (one code path),
so a recipe `check` calls valid does not fail validation later.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from ..errors import UserError
from ..models.imported import resolve
from ..recipe import parse_recipe, read_yaml_recipe
from ..studies.common import validate_study_recipe
from ..studies.feature_maps import validate_fmc_recipe
from ..studies.predictive_exit import validate_exit_recipe

VALIDATORS = {"chain": parse_recipe, "exit": validate_exit_recipe, "fmc": validate_fmc_recipe,
              "order": validate_study_recipe, "search": validate_study_recipe}
KINDS = tuple(VALIDATORS)
# Top-level keys only one kind of recipe has; the keys they share (name, seed, data...) say nothing.
_MARKS = {"chain": ("chain",), "exit": ("exits", "predictive", "energy", "runtime"), "fmc": ("tasks", "throughput")}


def detect_kind(obj: object, source: str) -> str:
    """Which command a recipe is for, from its top-level keys. A recipe with none of the marking keys
    is a chain recipe (the default command's); one with keys of two kinds is refused, since
    validating it against either schema would only report the other kind's keys as typos."""
    if not isinstance(obj, dict):
        return "chain"                  # validation then says it is not a mapping
    found = {k: [m for m in marks if m in obj] for k, marks in _MARKS.items()}
    found = {k: v for k, v in found.items() if v}
    if len(found) > 1:
        (a, ka), (b, kb) = list(found.items())[:2]
        an = {"chain": "a", "exit": "an", "fmc": "an"}
        raise UserError(f"{source}: cannot tell which kind of recipe this is: it has keys of {an[a]} {a} recipe "
                        f"({', '.join(ka)}) and of {an[b]} {b} recipe ({', '.join(kb)}); keep one kind or give --kind")
    return next(iter(found), "chain")


def validate_kind(kind: str, obj: object, source: str) -> BaseModel:
    """Validate a parsed recipe with the schema of `kind`, plus the checks each command makes before
    any training (an exit recipe's platform profile, an order/search recipe's techniques)."""
    validate = VALIDATORS.get(kind)
    if validate is None:
        raise UserError(f"--kind: '{kind}' is not a kind of recipe; use one of {', '.join(KINDS)}")
    return validate(obj, source)


def import_specs(obj: object, path: str = "") -> Iterator[tuple[str, str, str | None]]:
    """(field path, `import` target, weights) of every import spec in a validated recipe, wherever it
    sits (the model, a distillation student, a task of an fmc recipe)."""
    if isinstance(obj, BaseModel):
        target = getattr(obj, "import_", None)
        if isinstance(target, str):
            yield path or "model", target, getattr(obj, "weights", None)
        for name in type(obj).model_fields:
            yield from import_specs(getattr(obj, name), f"{path}.{name}" if path else name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from import_specs(v, f"{path}[{i}]")


def resolve_imports(cfg: BaseModel, source: str) -> list[str]:
    """Resolve every import spec as the run would (module imports, the callable is an nn.Module class or
    comes from an allowed module) and find its weights file, without calling anything: a recipe `check`
    calls valid does not fail on its imports later."""
    found = []
    for field, target, weights in import_specs(cfg):
        try:
            resolve(target, f"{field}.import")
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        if weights is not None and not Path(weights).is_file():
            raise UserError(f"{source}: {field}.weights: file '{weights}' not found; give the path of a .safetensors file")
        found.append(f"{field}.import {target} resolves")
    return found


def describe(kind: str, cfg: BaseModel, source: str) -> str:
    """The one line `chaincomp check` prints for a valid recipe."""
    if kind == "fmc":
        what = f"{len(cfg.tasks)} task(s): " + ", ".join(f"{t.model.name} on {t.data.name}" for t in cfg.tasks)
    elif kind == "exit":
        what = (f"{cfg.model.name} on {cfg.data.name}, {cfg.exits.head} exits ({cfg.exits.train}), "
                f"platform {cfg.energy.platform}")
    else:
        what = f"{cfg.model.name} on {cfg.data.name}, " + (" -> ".join(cfg.techniques()) or "(no stages)")
    return f"{source}: valid {kind} recipe '{cfg.name}': {what}"


def check_document(obj: object, source: str, kind: str | None = None) -> str:
    """Validate a parsed recipe of any kind (detected when not given); the line to print, or UserError."""
    kind = kind or detect_kind(obj, source)
    cfg = validate_kind(kind, obj, source)
    imports = resolve_imports(cfg, source)
    return describe(kind, cfg, source) + (f" ({'; '.join(imports)})" if imports else "")


def check_recipe(path: str | None, kind: str | None = None) -> str:
    """`chaincomp check`: read a recipe file (or built-in name) and validate it; never trains."""
    obj, _, source = read_yaml_recipe(path, "default")
    return check_document(obj, source, kind)


def _cmd_check(args: argparse.Namespace) -> int:
    print(check_recipe(args.recipe, args.kind))
    return 0


def register(sub) -> None:
    c = sub.add_parser("check", help="validate a recipe of any command without running it")
    c.add_argument("recipe", nargs="?", help="recipe YAML, or a built-in name")
    c.add_argument("--kind", choices=KINDS, help="the command the recipe is for (default: told by its keys: "
                   "chain -> chain, exits/predictive/energy/runtime -> exit, tasks/throughput -> fmc)")
    c.set_defaults(func=_cmd_check)
