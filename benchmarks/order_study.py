"""Benchmarks of `chaincomp order` (results go to benchmarks/order_results.md by hand).

    python benchmarks/order_study.py default [--out DIR]            # the default study, timed, checked
    python benchmarks/order_study.py speedup [--workers 1 2] [RECIPE] # same chains, 1 vs 2 Ray workers

Why a subprocess per measurement: the time a user waits includes Python start, Ray start and the
baseline, so the command is timed as a user runs it. `speedup` trains the baseline once and copies
it into each folder, so both worker counts run exactly the same chains and only the chains are
compared. The machine's load average is printed beside every timing: on a shared machine it
explains more of the time than the code does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _order(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chaincomp", "order", *args], check=True)
    return time.perf_counter() - t0


def check(out: Path) -> dict:
    """Is the written order a valid topological order of its own pairwise results?"""
    res = json.loads((out / "order.json").read_text())
    pos = {t: i for i, t in enumerate(res["order"])}
    edges = [(p["winner"], p["second"] if p["winner"] == p["first"] else p["first"])
             for p in res["pairs"] if p["winner"] != "tie"]
    return {"order": res["order_letters"], "valid": all(pos[u] < pos[v] for u, v in edges),
            "cycles": res["cycles"], "pairs": {f"{p['first']}/{p['second']}": p["winner"] for p in res["pairs"]},
            "metrics": {"".join(x[0].upper() for x in o["order"]): (o["metric"], o["bitops"])
                        for p in res["pairs"] for o in p["orders"]}}


def default(out: Path, workers: int | None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    before = _load()
    extra = ["--workers", str(workers)] if workers is not None else []
    secs = _order(["--out", str(out), *extra])
    info = check(out)
    print(json.dumps({"command": f"chaincomp order --out {out} {' '.join(extra)}".strip(), "seconds": round(secs, 1),
                      "load_before": before, "load_after": _load(), "machine": _machine(), **info}, indent=1))


def speedup(recipe: str | None, workers: list[int], out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    base = out / "base"
    rec = [recipe] if recipe else []
    # Train the baseline once (a study of the first pair only would also run chains; stop before).
    from chaincomp.studies.common import ensure_baseline
    from chaincomp.studies.order import study_recipe

    r, _ = study_recipe(recipe)
    base.mkdir(parents=True)
    ensure_baseline(r, base)
    rows = []
    for w in workers:
        d = out / f"w{w}"
        d.mkdir()
        shutil.copy(base / "baseline.safetensors", d / "baseline.safetensors")
        before = _load()
        secs = _order([*rec, "--out", str(d), "--workers", str(w)])
        rows.append({"workers": w, "seconds": round(secs, 1), "load_before": before, "load_after": _load(),
                     "order": check(d)["order"]})
    print(json.dumps({"machine": _machine(), "runs": rows,
                      "speedup": round(rows[0]["seconds"] / rows[-1]["seconds"], 2)}, indent=1))


def _machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("default")
    d.add_argument("--out", default="/tmp/chaincomp-bench/order-default")
    d.add_argument("--workers", type=int, default=None)
    s = sub.add_parser("speedup")
    s.add_argument("recipe", nargs="?")
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    s.add_argument("--out", default="/tmp/chaincomp-bench/order-speedup")
    a = p.parse_args()
    if a.what == "default":
        default(Path(a.out), a.workers)
    else:
        speedup(a.recipe, a.workers, Path(a.out))


if __name__ == "__main__":
    main()
