"""What the GPU checks share: arguments, the environment record, toy-size (--smoke) recipes, summaries.

Each check is one script: `python benchmarks/gpu/NAME.py OUT [--smoke] [--device D]`. Full size needs
CIFAR-10 ($CHAINCOMP_DATA, see ../shared/device/README.md) and is sized for one H200; `--smoke` runs the
same code path on the 8x8 digits at toy width on the CPU in about a minute (tests/test_gpu_scripts.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))      # the checkout's chaincomp, as setup.sh arranges

import torch  # noqa: E402


def parse(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("out", help="folder for the results (created)")
    p.add_argument("--smoke", action="store_true", help="toy size on the CPU (digits, narrow nets, 1 epoch)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto; --smoke: cpu)")
    a = p.parse_args()
    a.out = Path(a.out)
    a.out.mkdir(parents=True, exist_ok=True)
    a.device = a.device or ("cpu" if a.smoke else "auto")
    os.environ.setdefault("CHAINCOMP_CACHE", str(a.out / "cache"))   # baselines trained here are reused on a rerun
    if a.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    return a


def environment(device: str) -> dict:
    from chaincomp import __version__
    from chaincomp.device import describe, resolve

    dev = resolve(device, "--device")
    return {"device": describe(dev), "torch": torch.__version__, "chaincomp": __version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def smoke_recipe(obj: dict, width: float) -> dict:
    """The same recipe at toy size: digits (real data, no download), a narrow net, one epoch per step."""
    obj = json.loads(json.dumps(obj))
    obj["data"] = {"name": "digits", "limit_train": 128, "limit_test": 64}
    obj["model"]["width"] = width
    obj["baseline"].update(epochs=1, batch_size=64)
    obj["amp"] = False
    for s in obj.get("chain", []):
        s["epochs"] = 1
        s["batch_size"] = 64
        if s["technique"] == "prune":
            s["steps"] = 1
            s.pop("round_to", None)
        if s["technique"] == "quantize":
            s["calibration_batches"] = 1
    return obj


def builtin(name: str) -> dict:
    import yaml

    from chaincomp.recipe import builtin_recipes
    return yaml.safe_load(builtin_recipes()[name])


def finish(out: Path, name: str, summary: dict, t0: float) -> int:
    """Write OUT/summary.json and OUT/summary.md; print the figures; exit 0 (targets are reported, not
    enforced: a run that misses them is still a record)."""
    from chaincomp.io import atomic_write_text, write_json

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "summary.json", summary)
    lines = [f"# {name}", ""] + [f"- {k}: {v}" for k, v in summary.items() if not isinstance(v, (dict, list))]
    for k, v in summary.items():
        if isinstance(v, dict):
            lines += ["", f"## {k}", ""] + [f"- {kk}: {vv}" for kk, vv in v.items()]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    print(json.dumps(summary, indent=1))
    return 0
