"""Benchmark of `chaincomp exit`: Predictive Exit against early exit and the classic network.

    python benchmarks/predictive_exit.py digits cifar_vgg cifar_resnet [--out runs/bench_exit]
    python benchmarks/predictive_exit.py --report-only            # rewrite the .md from finished runs

Each suite runs the command as a user does (a subprocess, timed, with the load average beside the
time: on a shared machine the load explains more of the latency than the code does), then
benchmarks/predictive_results.md is rewritten from the exit.json files, so every figure in it is
one the command printed and wrote. Beta is swept and chosen on validation data inside the command
(least computation with top-1 >= classic - 0.5 points); the sweep is tabulated here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from chaincomp.studies.predictive_exit import auroc_lines, ways_table
from chaincomp.studies.predictive_exit.report import equal_accuracy_lines

SUITES = {"digits": "exit_default", "cifar_vgg": "exit_cifar10_vgg", "cifar_resnet": "exit_cifar10_resnet"}
RESULTS = Path(__file__).with_name("predictive_results.md")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu() -> str:
    from chaincomp.deploy.bench import cpu_name
    return cpu_name()


def run(suite: str, out: Path) -> None:
    d = out / suite
    cmd = [sys.executable, "-m", "chaincomp", "exit", SUITES[suite], "--out", str(d)]
    before, t0 = _load(), time.perf_counter()
    rc = subprocess.run(cmd, env={**os.environ, "CHAINCOMP_QUIET": os.environ.get("CHAINCOMP_QUIET", "")}).returncode
    meta = {"command": f"chaincomp exit {SUITES[suite]} --out {d}", "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "load_before": before, "load_after": _load(), "cpu": _cpu(), "cores": os.cpu_count(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench_meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


def section(d: Path) -> list[str]:
    r = json.loads((d / "exit.json").read_text())
    m = json.loads((d / "bench_meta.json").read_text()) if (d / "bench_meta.json").exists() else {}
    p = r["predictive"]
    lines = [f"## {r['model']} on {r['dataset']} ({r['n_test']} test inputs)", "",
             f"- command: `{m.get('command', '?')}` (exit status {m.get('rc', '?')}, {m.get('seconds', '?')} s wall, "
             f"load average {m.get('load_before', '?')} before / {m.get('load_after', '?')} after)",
             f"- machine: {m.get('cpu', r['machine']['processor'])}, {m.get('cores', r['machine']['cpus'])} cores, "
             f"torch {r['machine']['torch']} (training on {r['machine']['threads']} threads, batch-1 timing on "
             f"{r['recipe']['runtime']['threads']}); date {r['date']}",
             f"- phases (s): {r.get('timings_s', {})}",
             f"- recipe: data {r['recipe']['data']}, model {r['recipe']['model']}, baseline {r['recipe']['baseline']}, "
             f"exits {r['recipe']['exits']}",
             f"- beta {r['beta']:.4g} ({r['beta_source']}); R {r['rounds']}, L0 block {r['start_block']}, "
             f"give-up {r['give_up']}; T = {[round(t, 3) for t in r['thresholds_T']]}",
             f"- energy: modelled on `{r['platform']}` (points {r['platform_points_mhz']} MHz), latency limit "
             f"{r['latency_limit_ms']:.4g} ms ({r['latency_limit_source']}); "
             f"measured energy: {r['measured_energy'] or 'no meter on this machine'}", "", *ways_table(r)]
    pa = p.get("prediction_accuracy")
    lines += ["", f"Early-exit reference: **{r['early_exit']['strategy']}** (the strategy with the least computation on "
              "validation at the same accuracy floor).", "",
              *equal_accuracy_lines(r), "",
              "At each way's own validation-chosen setting (accuracies differ): " + "; ".join(
                  f"{k} {v:.1f}%" for k, v in r["at_chosen_points"].items() if isinstance(v, float)) + ".",
              f"Test top-1 within 0.5 points of classic: {r['test_within_max_drop']}.",
              f"DVFS policy `{p['policy']}` (limit met {p['deadline_met_pct']:.1f}%); with "
              f"`{p['other_policy']['policy']}` instead: predictive energy {p['other_policy']['energy_j'] * 1e6:.2f} uJ, "
              f"saving vs classic {100 * (1 - p['other_policy']['energy_j'] / r['classic']['energy_j']):.1f}% (chosen points), "
              f"limit met "
              f"{p['other_policy']['deadline_met_pct']:.1f}%.",
              f"Prediction accuracy: {'n/a' if pa is None else f'{pa:.1f}%'} of {p['n_first_predictions']} first "
              f"predictions, {p['prediction_accuracy_all'] or 0:.1f}% of all {p['n_predictions']}.", ""]
    if r.get("criteria_auroc"):
        lines += ["How well each exit criterion ranks an exit's right answers above its wrong ones (test AUROC, "
                  "0.5 = chance):", "", *auroc_lines(r), ""]
    lines += ["Beta sweep (predictive exit; the chosen beta in bold):", "",
              "| beta | val top-1 | val MACs | test top-1 | test MACs |", "|---|---|---|---|---|"]
    for s in r["sweep"]["predictive"]:
        b = f"**{s['setting']:.4g}**" if abs(s["setting"] - r["beta"]) < 1e-9 else f"{s['setting']:.4g}"
        lines.append(f"| {b} | {s['val_metric']:.2f} | {s['val_macs'] / 1e6:.4f} M | {s['test_metric']:.2f} | "
                     f"{s['test_macs'] / 1e6:.4f} M |")
    if r["warnings"]:
        lines += ["", "Warnings: " + " / ".join(r["warnings"])]
    return lines + [""]


def report(out: Path, missing: list[str]) -> None:
    lines = ["# Predictive Exit benchmark", "",
             "Written by `python benchmarks/predictive_exit.py` from the exit.json of each run; definitions in "
             "docs/predictive_exit.md. Energy figures are modelled (no meter here); latency is measured wall time "
             "per input at batch size 1 on this CPU.", ""]
    for suite in SUITES:
        d = out / suite
        if (d / "exit.json").exists():
            lines += section(d)
    if missing:
        lines += ["## Not run, or not measured here", ""] + [f"- {m}" for m in missing] + [""]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: digits)")
    ap.add_argument("--out", default="runs/bench_exit")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--missing", action="append", default=[], help="a line for the 'Not run' section")
    a = ap.parse_args()
    out = Path(a.out)
    bad = [s for s in a.suites if s not in SUITES]
    if bad:
        ap.error(f"unknown suite(s) {bad}; choose from {list(SUITES)}")
    if not a.report_only:
        for s in a.suites or ["digits"]:
            run(s, out)
    report(out, a.missing)


if __name__ == "__main__":
    main()
