"""Every chain recipe in recipes/ run at toy size and exported in the default format (Q/DQ), with the
export's accuracy check of ONNX Runtime against PyTorch on the test split.

A chain recipe is a YAML file of recipes/ with a top-level `chain:` key (cifar10_*.yaml, default.yaml;
exit_* and fmc_* are other commands' recipes). Its budget is cut to toy size without touching the model
or the chain's structure: baseline.epochs 1, every stage's `epochs` 1 (where above 0), prune `steps` 1,
data.limit_train / limit_test / val_size small. So the accuracy figures mean nothing; the graph each
recipe produces is the one exported and checked. A recipe whose export manifest exists is skipped
(its recorded row is reused) unless --force.

    python benchmarks/export_every_recipe.py [--only NAME ...] [--limit-train 2000] [--limit-test 1000]
        [--out runs/every] [--dataset-path ZIP] [--force] [--no-record]
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from chaincomp.chain import run_chain
from chaincomp.deploy.export import export_run
from chaincomp.device import cpu_field
from chaincomp.errors import UserError
from chaincomp.io import atomic_write_bytes, write_json
from chaincomp.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
RESULTS = Path(__file__).with_name("deploy_results.md")
OUT = Path("runs") / "every"   # ignored by git, like every run folder
BUILT_IN_DATA = ("digits", "sr_sample")     # datasets that read no files (no path)
ROW_FILE = "every_row.json"


def chain_recipes(folder: Path = RECIPES) -> list[Path]:
    """The YAML files of `folder` with a top-level `chain:` key, by name."""
    found = []
    for p in sorted(folder.glob("*.yaml")):
        if p.name.startswith(("exit_", "fmc_")):
            continue
        doc = yaml.safe_load(p.read_text())
        if isinstance(doc, dict) and "chain" in doc:
            found.append(p)
    return found


def toy(doc: dict, limit_train: int = 2000, limit_test: int = 1000, val_size: int = 500,
        dataset_path: str | None = None) -> dict:
    """The recipe document with its budget cut: same model, same stages in the same order with the same
    settings, but 1 epoch each, one pruning step, few images."""
    d = copy.deepcopy(doc)
    d.setdefault("baseline", {})["epochs"] = 1
    for stage in d.get("chain") or []:
        if stage.get("epochs", 1) > 0:          # a stage's default epochs is above 0 for every technique but fmc
            stage["epochs"] = 1
        if stage.get("technique") == "prune":
            stage["steps"] = 1
    data = d.setdefault("data", {})
    data["limit_train"] = min(limit_train, data.get("limit_train") or limit_train)
    data["limit_test"] = min(limit_test, data.get("limit_test") or limit_test)
    if data.get("name", "digits") not in BUILT_IN_DATA:
        data["val_size"] = min(val_size, data.get("val_size", val_size))
        if dataset_path:
            data["path"] = dataset_path
    return d


def model_of(recipe) -> str:
    name = recipe.model.name + (f" w{recipe.model.width:g}" if recipe.model.width != 1 else "")
    for s in recipe.chain:
        if s.technique == "distill":
            st = s.student
            sname = getattr(st, "name", None) or recipe.model.name
            width = getattr(st, "width", 1.0)
            name += f" -> {sname}" + (f" w{width:g}" if width != 1 else "")
    return name


def export_recipe(path: str | Path, out_root: str | Path = OUT, *, limit_train: int = 2000, limit_test: int = 1000,
                  val_size: int = 500, dataset_path: str | None = None, force: bool = False, echo=print) -> dict:
    """Run one chain recipe at toy size into out_root/<stem>, export it with the defaults, return its row."""
    path = Path(path)
    run_dir = Path(out_root) / path.stem
    row_file = run_dir / ROW_FILE
    manifest = run_dir / "export" / "model.manifest.json"
    if manifest.is_file() and row_file.is_file() and not force:
        echo(f"{path.stem}: export manifest exists ({manifest}); reusing its row (--force to redo)")
        return json.loads(row_file.read_text())
    doc = toy(yaml.safe_load(path.read_text()), limit_train, limit_test, val_size, dataset_path)
    recipe = parse_recipe(doc, f"{path} (toy budget)")
    threads = torch.get_num_threads()   # a recipe's `threads` is set process-wide by run_chain: restore it after
    t0 = time.perf_counter()
    try:
        try:
            results = run_chain(recipe, run_dir, resume=True, recipe_text=yaml.safe_dump(doc, sort_keys=False))
        except UserError as e:
            if "another recipe" not in str(e):
                raise
            echo(f"{path.stem}: {run_dir} holds a run of another toy budget; starting it afresh")
            shutil.rmtree(run_dir)
            results = run_chain(recipe, run_dir, resume=True, recipe_text=yaml.safe_dump(doc, sort_keys=False))
        run_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        lines: list[str] = []
        m = export_run(run_dir, echo=lambda s: (lines.append(s), echo(f"  {s}")))   # the defaults: Q/DQ, ORT
        export_s = time.perf_counter() - t1
    finally:
        torch.set_num_threads(threads)
    c = m["check"]
    row = {"recipe": path.stem, "model": model_of(recipe), "chain": recipe.techniques(), "stage": m["stage"],
           "dataset": results["dataset"], "train": recipe.data.limit_train, "test": c["n"],
           "kernels": m["kernels"].get("mode", m["kernels"]["kind"]), "kind": m["kind"],
           "metric_name": c["metric_name"], "torch_metric": c["torch_metric"], "onnx_metric": c["onnx_metric"],
           "prediction_agreement": c.get("prediction_agreement"), "exit_agreement": c.get("exit_agreement"),
           "max_abs_diff": c["max_abs_diff"], "tolerance": c["tolerance"], "passed": c["passed"],
           "fast_check": c.get("fast_check"), "integer_ops": m["integer_ops"],
           "files": len(m["files"]), "run_s": round(run_s, 1), "export_s": round(export_s, 1),
           "manifest": str(manifest)}
    write_json(row_file, row)
    return row


def _pct(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| recipe | model | chain | train limit / test n | format | PyTorch top1 | ORT top1 | agreement % "
            "| max-abs diff | passed | integer ops (ORT optimized graph) | run s | export s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ops = ", ".join(f"{k} x{v}" for k, v in r["integer_ops"].items()) or "none"
        chain = " > ".join(r["chain"]) or "(none: baseline only)"
        passed = "yes" if r["passed"] else "**NO**"
        if r.get("fast_check"):
            passed += " (fast rounding failed: faithful)"
        lines.append(f"| {r['recipe']} | {r['model']} | {chain} | {r['train']} / {r['test']} | {r['kernels']} "
                     f"| {_pct(r['torch_metric'])} | {_pct(r['onnx_metric'])} | {_pct(r['prediction_agreement'])} "
                     f"| {r['max_abs_diff']:.3g} | {passed} | {ops} | {r['run_s']} | {r['export_s']} |")
    return "\n".join(lines)


def _sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def record(rows: list[dict], argv: list[str], args, failed: dict[str, str]) -> str:
    cpu = cpu_field("model name") or "?"
    cmd = " ".join(shlex.quote(a) for a in ["python", "benchmarks/export_every_recipe.py", *argv])
    text = [f"## {time.strftime('%Y-%m-%d %H:%M')} — Q/DQ export (the default) of every chain recipe in recipes/", "",
            f"- command: `{cmd}`",
            f"- machine: `{cpu}`; {torch.get_num_threads()} torch threads",
            f"- load (`uptime`) at the end: `{_sh('uptime')}`",
            "- budgets cut to toy size (baseline and every stage 1 epoch, prune 1 step, the training and test "
            "images of the table's column, a small val split): the accuracy "
            "figures mean nothing, but the model and chain are each recipe's own, so the graph each recipe "
            "produces is the one exported and checked (`chaincomp export` defaults: Q/DQ, ORT weight form, "
            "check tolerance 0.5 points on the test split).",
            "- agreement: top-1 predictions of ORT equal to PyTorch's; max-abs diff: largest logit difference "
            "over every output; run s / export s: wall seconds of the toy run and of the export with its check "
            "(rows reused from an earlier invocation keep their seconds).", "", table(rows), ""]
    for name, why in failed.items():
        text.append(f"- {name}: FAILED before a check: {why}")
    return "\n".join(text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", help="recipe file stem (repeatable)")
    p.add_argument("--limit-train", type=int, default=2000)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--dataset-path", help="data.path of recipes whose dataset reads files (default: the recipe's)")
    p.add_argument("--force", action="store_true", help="redo recipes whose export manifest exists")
    p.add_argument("--no-record", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    args = p.parse_args(argv)
    paths = chain_recipes()
    if args.only:
        unknown = set(args.only) - {q.stem for q in paths}
        if unknown:
            p.error(f"--only: not chain recipes of {RECIPES}: {', '.join(sorted(unknown))}")
        paths = [q for q in paths if q.stem in args.only]
    rows, failed = [], {}
    for q in paths:
        print(f"== {q.stem}", flush=True)
        try:
            rows.append(export_recipe(q, args.out, limit_train=args.limit_train, limit_test=args.limit_test,
                                      val_size=args.val_size, dataset_path=args.dataset_path, force=args.force))
        except Exception as e:      # one recipe's failure is a finding of the record, not the end of the others
            failed[q.stem] = f"{type(e).__name__}: {e}"
            print(f"{q.stem}: FAILED: {failed[q.stem]}", flush=True)
    text = record(rows, argv, args, failed)
    print(text)
    if not args.no_record:
        atomic_write_bytes(RESULTS, (RESULTS.read_text().rstrip("\n") + "\n\n" + text).encode())
        print(f"appended to {RESULTS}")
    return 0 if rows and all(r["passed"] for r in rows) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
