"""The peers `bench` times beside a run's compressed model, all built from the same run: ONNX
Runtime's own static int8 of the FP32 baseline, Torch-Pruning alone at the recipe's ratio, and the
zoo's smaller networks trained with the baseline budget (the accuracy/latency front). Why apart from
bench.py: building peers (training, quantizing) and timing models are separate concerns."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from .export import calibration_input, export_model


def ort_int8_peer(fp32: Path, out: Path, data, batches: int = 8, batch_size: int = 32) -> Path:
    """ONNX Runtime's post-training static quantization of the FP32 baseline: QDQ, int8 per-channel
    weights, uint8 activations, min-max ranges from the first `batches` train batches."""
    import logging

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            it = zip(range(batches), data.train.batches(batch_size))
            self.items = [{"input": np.ascontiguousarray(x.numpy(), np.float32)} for _, (x, _y) in it]

        def get_next(self):
            return self.items.pop(0) if self.items else None

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger
    tmp = out.with_name(f".{out.name}.tmp")  # ORT writes in place: a rename keeps a kill from leaving half
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    os.replace(tmp, out)
    return out


def prune_peer(baseline: torch.nn.Module, run, epochs: int) -> tuple[torch.nn.Module, dict]:
    """Torch-Pruning alone on the baseline: the recipe's (first) prune settings in one step, or ratio
    0.5 with L2 importance when the recipe has no prune stage; then `epochs` epochs of fine-tuning."""
    from ..pruning import make_pruner
    from ..stages.prune import PruneConfig
    from ..train import fit

    cfg = next((s for s in run.recipe.chain if s.technique == "prune"), None) or PruneConfig(ratio=0.5, importance="l2")
    model = copy.deepcopy(baseline).eval()
    importance = "l2" if cfg.importance == "taylor" else cfg.importance  # no gradients for a one-shot peer
    make_pruner(model, run.data.sample_input(2), importance=importance, ratio=cfg.ratio, global_pruning=cfg.global_,
                max_layer_ratio=cfg.max_layer_ratio, round_to=cfg.round_to).step()
    if epochs:
        fit(model, run.data, cfg.fit_config(epochs),
            stage="peer torch-pruning", seed=run.recipe.seed)
    model.eval()
    return model, {"ratio": cfg.ratio, "importance": importance, "global": cfg.global_,
                   "finetune_epochs": epochs}


SMALLER_DEPTHS = (8, 14, 20, 32)


def smaller_specs(model: str, width: float) -> list[tuple[str, float]]:
    """The zoo's smaller networks a user would try first: shallower CIFAR ResNets at the same width, else
    the same network at 1/4 and 1/2 of the width."""
    if model.startswith("resnet") and model[6:].isdigit() and model != "resnet34":
        return [(f"resnet{d}", width) for d in SMALLER_DEPTHS if d < int(model[6:])]
    return [(model, width * f) for f in (0.25, 0.5)]


def smaller_peers(run, folder: Path, echo) -> dict[str, dict]:
    """Each smaller network trained with the recipe's baseline budget (seed, data, epochs), then ONNX
    Runtime's static int8: the accuracy/latency front the compressed model should sit above."""
    from ..chain import train_baseline
    from ..energy.cost import profile_model

    out = {}
    for name, width in smaller_specs(run.recipe.model.name, run.recipe.model.width):
        tag = f"small_{name}_w{width:g}"
        spec = run.recipe.model.model_copy(update={"name": name, "width": width, "weights": None})
        echo(f"peer {tag}: training with the baseline budget ({run.recipe.baseline.epochs} epochs)")
        model = train_baseline(run.recipe.model_copy(update={"model": spec}), run.data).eval()
        export_model(model, calibration_input(run.data), folder / f"{tag}.onnx")
        ort_int8_peer(folder / f"{tag}.onnx", folder / f"{tag}_int8.onnx", run.data)
        fp32 = float(profile_model(model, run.data.sample_input()).total()["bitops"])
        out[tag] = {"desc": {"files": [f"{tag}_int8.onnx"], "exit_rule": None, "kind": "ort-static-int8"},
                    "bitops": fp32 * 64 / 1024, "bitops_note": f"{name} width {width:g}, trained with the "
                    "baseline budget, ORT static int8 (nominal W8A8 BitOps)"}
    return out


def front_note(result: dict) -> list[str]:
    """For each batch size: the smaller int8 peers at least as accurate and as fast as the compressed model."""
    lines = []
    small = [n for n in result["models"] if n.startswith("small_")]
    if not small:
        return lines
    m = result["models"]
    for r in result["batches"]:
        beat = [n for n in small if m[n]["metric"] >= m["compressed"]["metric"]
                and r[n]["median_ms"] <= r["compressed"]["median_ms"]]
        lines.append(f"- batch {r['batch']}: " + (f"dominated by {', '.join(beat)} (as accurate and as fast)" if beat
                     else "above the smaller networks' int8 front (none is both as accurate and as fast)"))
    return lines
