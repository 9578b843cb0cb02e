"""Run a chain recipe and append its figures to a Markdown record, with command, machine and date.

    python benchmarks/chain_benchmark.py cifar10_resnet20_cpu --out runs/bench-cifar10 \
        --record benchmarks/chain_results.md

Resumable (`--resume` is passed through), so a long CPU run can be continued after an interruption.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def machine() -> str:
    import torch

    from chaincomp.deploy.bench import cpu_name
    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--out", required=True)
    ap.add_argument("--record", default="benchmarks/chain_results.md")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "chaincomp", "run", a.recipe, "--out", a.out] + (["--resume"] if a.resume else [])
    t0 = time.time()
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc
    res = json.loads((Path(a.out) / "results.json").read_text())
    from chaincomp.report import HEADERS, markdown_table, run_rows

    f = res["final"]
    text = f"""
## {res['recipe']}: {res['model']} on {res['dataset']} ({time.strftime('%Y-%m-%d')})

- command: `{' '.join(['chaincomp'] + cmd[3:])}` (wall {time.time() - t0:.0f} s for this invocation)
- machine: {machine()}
- chain: {' -> '.join(res['chain'])}; budget: see the recipe (`recipes/{a.recipe}.yaml` or the file given)

{markdown_table(HEADERS, run_rows(res))}

Final: {res['metric_name']} {f['metric']:.2f} ({f['metric_delta']:+.2f} points), {f['bitops_reduction']:.1f}x fewer BitOps.
"""
    rec = Path(a.record)
    rec.write_text((rec.read_text() if rec.exists() else "# Chain benchmark records\n") + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
