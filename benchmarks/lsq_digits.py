"""W2A8 with fixed (MSE) scales versus learned step sizes (LSQ), same QAT epochs, on the CPU.

`--chain quantize`: the default recipe's baseline (digits_cnn, 40 epochs), then its quantize stage alone
at 2-bit weights / 8-bit activations (first and last layers at 8 bits). `--chain default`: the whole
default chain (D -> P -> Q -> E) with that quantize stage; the LSQ run resumes a copy of the fixed run
after its prune stage, so both quantize the same pruned student. Prints one line per run and a table.

    PYTHONPATH=src python benchmarks/lsq_digits.py OUT [--chain quantize|default] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import yaml

from chaincomp.chain import run_chain
from chaincomp.recipe import builtin_recipes, parse_recipe


def recipe(chain: str, scales: str, seed: int) -> dict:
    obj = yaml.safe_load(builtin_recipes()["default"])
    obj["seed"] = seed
    q = next(s for s in obj["chain"] if s["technique"] == "quantize")
    q.update(weight_bits=2, act_bits=8, scales=scales)      # epochs, lr, calibration: the recipe's
    if chain == "quantize":
        obj["chain"] = [q]
    obj["name"] = f"w2a8-{chain}-{scales}-s{seed}"
    return obj


def run(obj: dict, out: Path, resume: bool = False) -> dict:
    t0 = time.perf_counter()
    res = run_chain(parse_recipe(obj), out, resume=resume, write_report=False, recipe_text=yaml.safe_dump(obj))
    q = next(s for s in res["stages"] if s["technique"] == "quantize")
    row = {"run": obj["name"], "quantize_top1": q["metric"], "final_top1": res["final"]["metric"],
           "baseline_top1": res["baseline"]["metric"], "bitops_reduction": res["final"]["bitops_reduction"],
           "seconds": round(time.perf_counter() - t0, 1)}
    print(row, flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--chain", choices=["quantize", "default"], default="quantize")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        fixed = recipe(a.chain, "fixed", seed)
        rows.append(run(fixed, a.out / fixed["name"]))
        lsq = recipe(a.chain, "lsq", seed)
        dst = a.out / lsq["name"]
        shutil.copytree(a.out / fixed["name"], dst)     # same baseline (and D, P) checkpoints: resumed from them
        for f in ("results.json", "run.json", "recipe.yaml"):
            (dst / f).unlink(missing_ok=True)
        rows.append(run(lsq, dst, resume=True))
    print("\n| run | baseline top-1 | after quantize | final top-1 | BitOps reduction |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['baseline_top1']:.2f} | {r['quantize_top1']:.2f} | {r['final_top1']:.2f} "
              f"| {r['bitops_reduction']:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
