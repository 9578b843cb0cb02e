"""The deploy chain from a converged ResNet-56: cifar10_resnet56_deploy's chain on all training images.

Teacher: `cifar10_resnet56_converge` (trained once into the baseline cache, reused on a rerun). The chain
(distil into ResNet-14, prune with counts multiple of 16, 8-bit QAT) runs on the device; the result is
exported to ONNX and checked in ONNX Runtime. Target: at most 0.5 points lost against the converged FP32
baseline. The speed-up is measured afterwards on the 2-core CPU, where the deploy figures were recorded:
copy OUT/run back and run `chaincomp bench OUT/run --threads 1` (and --threads 2). Sized for 9 minutes
on one H200 (NOT yet run on a GPU).

    python benchmarks/gpu/deploy_resnet56.py OUT [--device cuda]
    python benchmarks/gpu/deploy_resnet56.py OUT --smoke
"""
from __future__ import annotations

import time

import common

TARGET = {"points_lost_at_most": 0.5}


def main() -> int:
    a = common.parse(__doc__)
    t0 = time.perf_counter()
    from chaincomp.chain import run_chain
    from chaincomp.deploy.export import export_run
    from chaincomp.recipe import parse_recipe
    from chaincomp.studies.baseline import train_once

    obj = common.builtin("cifar10_resnet56_converge")
    obj["name"] = "deploy_resnet56"
    obj["chain"] = common.builtin("cifar10_resnet56_deploy")["chain"]
    obj["device"] = a.device
    if a.smoke:
        obj = common.smoke_recipe(obj, width=0.25)
    recipe = parse_recipe(obj, "deploy_resnet56")
    base = train_once(recipe.model_copy(update={"chain": []}))
    res = run_chain(recipe, a.out / "run", resume=True)
    # The ORT check compares against PyTorch on the CPU: cuDNN's TF32 convolutions are not the float
    # arithmetic ONNX Runtime runs, and the check is about the export, not the GPU.
    manifest = export_run(a.out / "run", device="cpu", echo=lambda *_: None)
    f = res["final"]
    lost = -f["metric_delta"]
    return common.finish(a.out, "deploy_resnet56", {
        "smoke": a.smoke, **common.environment(a.device),
        "baseline_top1": res["baseline"]["metric"], "baseline_cached": base["reused"],
        "final_top1": f["metric"], "points_lost": round(lost, 4), "bitops_reduction": f["bitops_reduction"],
        "onnx_check": {k: manifest["check"][k] for k in ("torch_metric", "onnx_metric", "passed")},
        "bench_next": f"on the 2-core CPU: chaincomp bench {a.out / 'run'} --threads 1",
        "target": TARGET, "target_met": bool(lost <= TARGET["points_lost_at_most"]),
    }, t0)


if __name__ == "__main__":
    raise SystemExit(main())
