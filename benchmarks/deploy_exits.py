"""Exits where they pay, measured: a run's exit network exported with every exit and with `--exits measured`
(exits whose measured saving beats their cost), both timed in ONNX Runtime in one process, calls
interleaved; prints the plan's reasons and a markdown table (ms per call, best and median).

    python benchmarks/deploy_exits.py RUN_DIR [--threads 2] [--runs 400]
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

from chaincomp.deploy.bench import cpu_name, inputs_for
from chaincomp.deploy.export import export_run
from chaincomp.deploy.runtime import Deployed
from deploy_qdq_vs_qop import timed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=400)
    args = p.parse_args(argv)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} — exits where they pay, {Path(args.run_dir).name}", "",
             f"- command: `python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}`",
             f"- machine: {cpu_name()}, load average {[round(x, 2) for x in os.getloadavg()]}", ""]
    with tempfile.TemporaryDirectory() as d:
        ms = {k: export_run(args.run_dir, Path(d) / k / "m.onnx", exits=k, echo=lambda s: None)
              for k in ("all", "measured")}
        for x in ms["measured"]["exit_plan"]["exits"]:
            lines.append(f"- exit at block {x['point']}: {x['reason']} ({x['rows_exiting']:.0%} of rows leave there)")
        lines += [f"- check: all exits {ms['all']['check']['onnx_metric']:.2f}, measured exits "
                  f"{ms['measured']['check']['onnx_metric']:.2f} (PyTorch of each: {ms['all']['check']['torch_metric']:.2f}, "
                  f"{ms['measured']['check']['torch_metric']:.2f})", "",
                  "| batch | threads | segments all / measured | all best | measured best | all median | measured median |",
                  "|---|---|---|---|---|---|---|"]
        models = {k: Deployed(Path(d) / k, m, args.threads, spinning=False) for k, m in ms.items()}
        from chaincomp.chain import load_run
        data = load_run(args.run_dir).data
        for b in (1, 64):
            t = timed(models, inputs_for(data, b), args.runs, 30)
            lines.append(f"| {b} | {args.threads} | {len(ms['all']['files'])} / {len(ms['measured']['files'])} | "
                         f"{min(t['all']):.4f} | {min(t['measured']):.4f} | {statistics.median(t['all']):.4f} | "
                         f"{statistics.median(t['measured']):.4f} |")
    lines.append(f"- load average after: {[round(x, 2) for x in os.getloadavg()]}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
