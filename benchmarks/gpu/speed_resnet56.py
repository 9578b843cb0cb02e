"""Training speed on the device: a float ResNet-56 CIFAR-10 epoch and a W4A4 QAT epoch, and how often
the training loop waits for the host.

Targets on one H200 (issue 16): a float epoch in at most 3 s, a QAT epoch at most 1.3x a float one (it
was 3.6x when the activation-range tracking read each layer's max on the host). Host synchronisations
are counted with torch.cuda.set_sync_debug_mode("warn") over one QAT epoch: the loop should read the
device only every CHECK_EVERY steps and at the epoch's end. NOT yet run on a GPU.

    python benchmarks/gpu/speed_resnet56.py OUT [--device cuda]
    python benchmarks/gpu/speed_resnet56.py OUT --smoke
"""
from __future__ import annotations

import time
import warnings
from itertools import islice

import common


def main() -> int:
    a = common.parse(__doc__)
    t0 = time.perf_counter()
    import torch

    from chaincomp.chain import placed
    from chaincomp.data import load_data, model_kwargs
    from chaincomp.models import build_model
    from chaincomp.qmodules import QuantPlan, apply_quant, calibrate
    from chaincomp.recipe import parse_recipe
    from chaincomp.train import CHECK_EVERY, FitConfig, fit, on_device

    obj = {"name": "speed", "device": a.device, "model": {"name": "resnet56", "width": 1.0},
           "data": {"name": "cifar10", "val_size": 2000}, "baseline": {"epochs": 1}}
    if a.smoke:
        obj = common.smoke_recipe(obj, width=0.25)
    recipe = parse_recipe(obj, "speed_resnet56")
    data = placed(load_data(recipe.data, recipe.seed), recipe)
    dev = data.device
    torch.manual_seed(0)
    model = build_model("resnet56", width=recipe.model.width, **model_kwargs(data))
    cfg = FitConfig(epochs=1, lr=0.1, batch_size=256)
    steps = -(-len(data.train) // cfg.batch_size)

    def epoch_seconds() -> float:
        fit(model, data, cfg, stage="timing", seed=1)       # warm-up (cuDNN autotuning, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        fit(model, data, cfg, stage="timing", seed=2)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    float_s = epoch_seconds()
    apply_quant(model, QuantPlan(weight_bits=4, act_bits=4, first_last_bits=8))
    with on_device(model, dev):
        calibrate(model, (x for x, _ in islice(data.train.batches(256, device=dev), 4)), "minmax")
    qat_s = epoch_seconds()
    syncs = None
    if dev.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(model, data, cfg, stage="sync count", seed=3)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    ratio = qat_s / float_s
    return common.finish(a.out, "speed_resnet56", {
        "smoke": a.smoke, **common.environment(a.device), "train_images": len(data.train), "batch": cfg.batch_size,
        "steps_per_epoch": steps, "float_epoch_s": round(float_s, 3), "qat_w4a4_epoch_s": round(qat_s, 3),
        "qat_over_float": round(ratio, 3),
        "host_syncs_in_one_qat_epoch": syncs, "loss_read_every_steps": CHECK_EVERY,
        "target": {"float_epoch_s_at_most": 3.0, "qat_over_float_at_most": 1.3},
        "target_met": None if a.smoke else bool(float_s <= 3.0 and ratio <= 1.3),
    }, t0)


if __name__ == "__main__":
    raise SystemExit(main())
