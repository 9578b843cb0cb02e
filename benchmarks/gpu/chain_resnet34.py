"""Chain of Compression at the paper's scale: ResNet-34 on CIFAR-10, D -> P -> Q -> E from a converged baseline.

Paper: 859x fewer BitOps at -0.09 points. Target here: >= 1000x at <= 0.1 points lost, counted by
chaincomp's ledger (first/last layers at their real 8 bits, every exit head passed counted). The
baseline is `cifar10_resnet34_converge` (trained once into the baseline cache, reused on a rerun);
the chain distils into a half-width ResNet-34, prunes half the channels in two steps, quantizes to
2-bit weights / 8-bit activations with QAT and learned step sizes (`scales: lsq`, the issue's fallback
when min-max/MSE scales do not hold accuracy at 1-2 bits), and adds two exits. Sized for 9 minutes on one H200
(estimates from ../shared/device/README.md's throughputs; NOT yet run on a GPU).

    python benchmarks/gpu/chain_resnet34.py OUT [--device cuda]      # full size (CIFAR-10)
    python benchmarks/gpu/chain_resnet34.py OUT --smoke              # toy size on the CPU (tests)
"""
from __future__ import annotations

import time

import common

CHAIN = [
    {"technique": "distill", "student": {"width": 0.5}, "alpha": 0.7, "temperature": 4.0, "epochs": 40, "lr": 0.1,
     "batch_size": 256},
    {"technique": "prune", "ratio": 0.5, "importance": "l2", "global": False, "steps": 2, "epochs": 20, "lr": 0.02,
     "batch_size": 256},
    {"technique": "quantize", "weight_bits": 2, "act_bits": 8, "first_last_bits": 8, "mode": "qat",
     "calibration": "mse", "scales": "lsq", "epochs": 30, "lr": 0.01, "batch_size": 256},
    {"technique": "early_exit", "points": [6, 12], "criterion": "confidence", "max_drop": 0.1, "epochs": 10,
     "lr": 0.01, "batch_size": 256},
]
TARGET = {"bitops_reduction_at_least": 1000.0, "points_lost_at_most": 0.1}


def main() -> int:
    a = common.parse(__doc__)
    t0 = time.perf_counter()
    from chaincomp.chain import run_chain
    from chaincomp.recipe import parse_recipe
    from chaincomp.studies.baseline import train_once

    obj = common.builtin("cifar10_resnet34_converge")
    obj["chain"] = CHAIN
    obj["device"] = a.device
    if a.smoke:
        obj = common.smoke_recipe(obj, width=0.0625)
    recipe = parse_recipe(obj, "chain_resnet34")
    base = train_once(recipe.model_copy(update={"chain": []}))      # the converged baseline, once
    res = run_chain(recipe, a.out / "run", resume=True)
    f = res["final"]
    lost = -f["metric_delta"]
    return common.finish(a.out, "chain_resnet34", {
        "smoke": a.smoke, **common.environment(a.device),
        "baseline_top1": res["baseline"]["metric"], "baseline_cached": base["reused"],
        "baseline_train_seconds": base.get("seconds"),
        "final_top1": f["metric"], "points_lost": round(lost, 4), "bitops_reduction": f["bitops_reduction"],
        "stages": {s["name"]: f"top1 {s['metric']:.2f}, BitOps {s['bitops']:.4g}, {s['seconds']:.0f} s"
                   for s in res["stages"]},
        "target": TARGET,
        "target_met": bool(f["bitops_reduction"] >= TARGET["bitops_reduction_at_least"]
                           and lost <= TARGET["points_lost_at_most"]),
    }, t0)


if __name__ == "__main__":
    raise SystemExit(main())
