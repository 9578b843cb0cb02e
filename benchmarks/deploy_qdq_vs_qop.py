"""Q/DQ against QOperator in ONNX Runtime, as a ratio measured in one process: the same run's model
exported both ways, the two drivers called in turn (the first rotating) after a warm-up, per batch
size and thread count; best and median of many calls. Prints a markdown record (command, machine,
load, date, table, ORT's optimized ops of each file) and appends it to deploy_results.md with --record.

    python benchmarks/deploy_qdq_vs_qop.py RUN_DIR [--stage S] [--runs 400] [--record]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chaincomp.chain import load_run
from chaincomp.deploy.bench import cpu_name, inputs_for, interleaved_ms
from chaincomp.deploy.export import calibration_input, export_model, strip_fmc
from chaincomp.deploy.runtime import Deployed, optimized_ops

RESULTS = Path(__file__).with_name("deploy_results.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--stage")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--threads", type=int, action="append")
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weights", default="auto", choices=("auto", "portable", "ort"))
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    run = load_run(args.run_dir, args.stage)
    strip_fmc(run.model)
    sample = calibration_input(run.data)
    rows, ops = [], {}
    with tempfile.TemporaryDirectory() as d:
        descs = {"qop": export_model(run.model, sample, Path(d) / "qop.onnx", "int8"),
                 "qdq": export_model(run.model, sample, Path(d) / "qdq.onnx", "qdq", weights=args.weights)}
        for k, desc in descs.items():
            ops[k] = optimized_ops([Path(d) / f for f in desc["files"]])
        for t in args.threads or [1, 2]:
            models = {k: Deployed(Path(d), desc, t, spinning=False) for k, desc in descs.items()}
            for b in args.batch or [1, 64]:
                ms = interleaved_ms(models, inputs_for(run.data, b), args.runs, args.warmup)
                best = {k: min(v) for k, v in ms.items()}
                med = {k: statistics.median(v) for k, v in ms.items()}
                rows.append(f"| {b} | {t} | {best['qop']:.4f} | {best['qdq']:.4f} | {best['qdq'] / best['qop']:.3f} "
                            f"| {med['qop']:.4f} | {med['qdq']:.4f} | {med['qdq'] / med['qop']:.3f} |")
                print(rows[-1], flush=True)
    text = "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M')} — Q/DQ vs QOperator, {Path(args.run_dir).name} "
        f"(stage {run.stage})", "",
        f"- command: `python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}`",
        f"- machine: {cpu_name()}, {len(os.sched_getaffinity(0))} usable cores; load average before/after "
        f"{[round(x, 2) for x in os.getloadavg()]}",
        f"- {args.runs} calls each after {args.warmup} warm-up, interleaved, spinning off; ms per call",
        "", "| batch | threads | QOp best | Q/DQ best | ratio best | QOp median | Q/DQ median | ratio median |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"- ORT optimized ops, QOperator file: {ops['qop']}",
        f"- ORT optimized ops, Q/DQ file: {ops['qdq']}", ""])
    print(text)
    if args.record:
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n\n" + text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
