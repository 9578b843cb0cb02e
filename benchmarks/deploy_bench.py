"""Deployment benchmark of one run folder: export + check, then `chaincomp bench`, and append a record
(command, machine, date, figures) to benchmarks/deploy_results.md. Every figure in the record is
the one the commands computed in this process; nothing is typed in by hand.

    python benchmarks/deploy_bench.py RUN_DIR [--stage S] [--batch 1 --batch 64] [--runs 200] [--threads N]
        [--smaller-peers]
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from chaincomp.deploy.bench import bench_markdown, bench_run, cpu_name
from chaincomp.deploy.export import export_run

RESULTS = Path(__file__).with_name("deploy_results.md")
HEADER = """# Deployment results

Records appended by `benchmarks/deploy_bench.py`: ONNX Runtime (CPU) latency of a run's compressed
model against its FP32 baseline and two peers measured in the same process, next to the BitOps
reduction the ledger counted. Newest last. Timings on a shared machine carry its load: read the
IQR and the load average before the median.
"""


def record(argv: list[str], manifest: dict, bench: dict) -> str:
    c = manifest["check"]
    agree = f", prediction agreement {c['prediction_agreement']:.1f}%" if "prediction_agreement" in c else ""
    exits = f", exit agreement {c['exit_agreement']:.1f}%" if "exit_agreement" in c else ""
    table = bench_markdown(bench).split("\n", 2)[2]  # drop the title line of bench.md
    return "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M')} — {Path(bench['run']).name} (stage {bench['stage']})", "",
        f"- command: `python {' '.join(shlex.quote(a) for a in argv)}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs ({bench['cores']} usable), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, load average during bench "
        f"{bench.get('load_avg')}",
        f"- export check ({c['n']} test samples): PyTorch {c['metric_name']} {c['torch_metric']:.2f}, "
        f"ONNX Runtime {c['onnx_metric']:.2f}, max-abs output diff {c['max_abs_diff']:.3g}{agree}{exits}; "
        f"ORT integer ops {manifest['integer_ops'] or 'none'}",
        "", table])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--stage", help="bench the model after this stage (default: the last)")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--peer-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, help="ORT intra-op threads (default: every usable core)")
    p.add_argument("--smaller-peers", action="store_true", help="also the zoo's smaller networks, int8 by ORT")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    manifest = export_run(args.run_dir, stage=args.stage)
    bench = bench_run(args.run_dir, args.batch, args.runs, args.warmup, args.threads, peer_epochs=args.peer_epochs,
                      stage=args.stage, smaller=args.smaller_peers)
    path = Path(args.results)
    text = path.read_text() if path.exists() else HEADER
    path.write_text(text.rstrip("\n") + "\n\n" + record([sys.argv[0], *(argv or sys.argv[1:])], manifest, bench))
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
