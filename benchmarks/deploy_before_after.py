"""The int8 export before and after Int8Pass, timed in one process: the FP32 baseline, the export of
git revision REV (default 357020e, before the pass: ConvInteger wherever a conv output is shared or
feeds an add/pool, and its 'mixed' variant with FP32 kernels there) and the current export, calls
interleaved round-robin (chaincomp.deploy.bench.time_models). Prints a markdown table; nothing is written.

    python benchmarks/deploy_before_after.py RUN_DIR [--stage S] [--runs 100] [--threads 1] [--rev 357020e]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import chaincomp.deploy.export as new
from chaincomp.deploy.bench import _loadavg, cpu_name, inputs_for, time_models
from chaincomp.chain import load_run


def old_export(rev: str):
    """chaincomp/export.py as it was at `rev`, imported as a sibling module (its relative imports work)."""
    src = subprocess.run(["git", "show", f"{rev}:src/chaincomp/export.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent).stdout
    path = Path(tempfile.mkdtemp()) / "export_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("chaincomp.export_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--stage")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rev", default="357020e")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    old = old_export(args.rev)
    run = load_run(args.run_dir, args.stage)
    d, t = Path(tempfile.mkdtemp()), args.threads
    cal = new.calibration_input(run.data)
    models = {"FP32 baseline": new.Deployed(d, new.export_model(run.baseline, cal, d / "b.onnx"), t),
              f"int8 at {args.rev}": old.Deployed(d, old.export_model(run.model, run.data.sample_input(),
                                                                      d / "o.onnx"), t),
              f"mixed at {args.rev}": old.Deployed(d, old.export_model(run.model, run.data.sample_input(),
                                                                       d / "m.onnx", "mixed"), t),
              "int8 now": new.Deployed(d, new.export_model(run.model, cal, d / "n.onnx"), t)}
    rows = {name: [] for name in models}
    for b in (1, 64):
        res = time_models({k: (lambda x, m=m: m(x)) for k, m in models.items()}, inputs_for(run.data, b),
                          args.runs, 5)
        base = res["FP32 baseline"]["median_ms"]
        for name, s in res.items():
            rows[name] += [f"{s['median_ms']:.3f} ± {s['iqr_ms']:.3f}", f"{base / s['median_ms']:.2f}x"]
    print(f"{Path(args.run_dir).name} (stage {run.stage}), {time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, "
          f"{t} ORT thread(s), {args.runs} runs, load average {[round(x, 2) for x in _loadavg()]}")
    print("| export | ms b=1 | speed-up b=1 | ms b=64 | speed-up b=64 |\n|---|---|---|---|---|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
