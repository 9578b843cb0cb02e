"""Bring-your-own-model benchmark: a CIFAR-10 chain on a MobileNetV2 the zoo does not have (the
re-implementation in tests/byom_nets.py: inverted residuals, depthwise 3x3, ReLU6), against its own
baseline, through the public API exactly as a user would call it.

    python benchmarks/byom_mobilenetv2.py --data ~/.cache/chaincomp/data --out runs/byom-mbv2 \
        --record benchmarks/byom_results.md [--width 1.0] [--epochs 30] [--resume]

It trains the baseline (`--epochs`), then distill -> prune -> quantize (W8A8) -> early exit, and
exports the result to ONNX with ORT's check; the Markdown record gets the command, the machine
(`lscpu` model name, cores), the date and the figures printed by the run. Resumable.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="CIFAR-10 source (folder or archive); default $CHAINCOMP_DATA")
    ap.add_argument("--out", default="runs/byom-mbv2")
    ap.add_argument("--record", default="benchmarks/byom_results.md")
    ap.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    ap.add_argument("--epochs", type=int, default=30, help="baseline epochs; stages get a share of it")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--dataset", default="cifar10", help="cifar10 (the benchmark); digits only to smoke-test the script")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    from byom_nets import MobileNetV2
    from chaincomp import compress
    from chaincomp.deploy.export import export_run
    from chaincomp.models.imported import allow_imports

    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, in_channels=1 if a.dataset == "digits" else 3, width_mult=a.width,
                        last=1280 if a.width >= 1 else 256)
    e = max(1, a.epochs // 3)
    chain = [{"technique": "distill", "student": {"width": 0.75}, "epochs": e, "lr": 0.05},
             {"technique": "prune", "ratio": 0.3, "steps": 2, "epochs": e, "round_to": 8},
             {"technique": "quantize", "weight_bits": 8, "act_bits": 8, "epochs": max(1, e // 2)},
             {"technique": "early_exit", "epochs": e, "max_drop": 1.0}]
    data = {"name": a.dataset, **({"path": a.data} if a.data else {}),
            **({"limit_train": a.limit_train} if a.limit_train else {})}
    t0 = time.time()
    r = compress(model, data, chain=chain, out=a.out, seed=0, resume=a.resume,
                 baseline={"epochs": a.epochs, "lr": 0.05, "batch_size": 128})
    checks = {}
    with allow_imports(given={"model": model}):   # Q/DQ (the default), QOperator codes, and float rescale
        for kernels in ("qdq", "int8", "exact"):
            checks[kernels] = export_run(a.out, out=Path(a.out) / f"export-{kernels}" / "model.onnx",
                                         kernels=kernels)["check"]
    res = r.results
    rows = [("baseline (own)", res["baseline"])] + [(s["name"], s) for s in res["stages"]]
    lines = [f"\n## MobileNetV2 (width {a.width}) on {a.dataset}, {time.strftime('%Y-%m-%d')}", "",
             f"command: `{' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}`  ",
             f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}  ",
             f"wall time: {time.time() - t0:.0f} s (measured)", "",
             "| stage | top-1 | BitOps | MACs | params |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {e['metric']:.2f} | {e['bitops']:.3g} | {e['macs']:.3g} | {e['params']} |" for n, e in rows]
    lines += ["", f"final: top-1 {res['final']['metric']:.2f} ({res['final']['metric_delta']:+.2f} against its own "
                  f"baseline), BitOps reduction {res['final']['bitops_reduction']}x (modelled from the measured model)"]
    lines += [f"ONNX Runtime check, kernels {k}: PyTorch {c['torch_metric']:.2f}, ORT {c['onnx_metric']:.2f}, "
              f"prediction agreement {c['prediction_agreement']:.2f}%, passed {c['passed']}  " for k, c in checks.items()]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    rec = Path(a.record)
    if not rec.exists():
        rec.write_text("# Bring your own model: recorded runs\n\nFigures as printed by "
                       "benchmarks/byom_mobilenetv2.py; BitOps/MACs are modelled from the model, top-1 measured.\n")
    with rec.open("a") as f:
        f.write(text + "\n")
    print(json.dumps(res["final"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
