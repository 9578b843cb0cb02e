"""Codec-aware tuning for `chaincomp fmc`: a per-map rate allocation and codec-aware fine-tuning.

Why: at about 4 bits per value one codec setting for every map leaves dense maps (tanh, residual
streams) short of near lossless, while sparse maps code almost exactly. So
- `allocate` gives one more index bit (finer points between the same endpoints) to the maps where
  that measured to help most per byte, for as long as the whole network's counted CBR ratio stays at
  or above `min_ratio`; measured on the validation split as the output distortion against uncoded
  maps (label free), so the test split stays untouched for the reported figures;
- `finetune` trains a copy with the codec in the forward pass (gradients straight through, the
  `fmc` stage's `epochs`), and `control` trains a copy for the same budget with uncoded maps: the
  control tells the codec's loss apart from what the extra training alone buys an unconverged model.
"""
from __future__ import annotations

import copy

from pydantic import BaseModel, ConfigDict, Field


class AllocateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_ratio: float = Field(4.0, ge=1.0, le=64.0, description="CBR ratio (counted, validation split, headers "
                             "included) the whole network must keep")
    max_index_bits: int = Field(4, ge=2, le=4)


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(0, ge=0, le=10_000, description="codec-aware fine-tuning epochs (0: none)")
    lr_factor: float = Field(0.1, gt=0, le=1, description="fraction of the task's baseline learning rate")


def attach_precision(model, points, bits_in: int) -> list:
    """Hooks that only move the maps to their bits_in form and back (float16, or int8 with the codec's
    per-map scale): the uncoded reference `metric_raw`."""
    from ..fmc import dtypes

    modules = dict(model.named_modules())

    def hook(_m, _i, out):
        if not hasattr(out, "dim") or out.dim() != 4:
            return None
        stored, _, qscale = dtypes.prepare(out.detach().float(), bits_in)
        return dtypes.restore(stored, out.dtype, qscale).to(out.device)
    return [modules[p].register_forward_hook(hook) for p in points]


def _split(data):
    """The validation split where there is one (allocation must not see the test split)."""
    return data.val if data.val is not None and len(data.val) else data.train


def _outputs(model, split, device) -> list:
    from ..train import predict

    return [o[-1].float() for o in predict(model, split, device=device)]


def distortion(model, points: dict, codec: dict, split, ref: list, device) -> tuple[float, int, int]:
    """(mean squared output error against `ref`, raw bytes, stream bytes) with these points coded."""
    from ..fmc.maps import FmcHooks

    fh = FmcHooks(model, points, codec)
    try:
        outs = _outputs(model, split, device)
        tot = fh.total()
    finally:
        fh.remove()
    se = sum(float((o - r).double().square().sum()) for o, r in zip(outs, ref))
    return se / sum(r.numel() for r in ref), tot["raw_bytes"], tot["encoded_bytes"]


def allocate(model, points: dict, codec: dict, data, cfg: AllocateConfig, bits_in: int) -> tuple[dict, dict]:
    """Points with a 4th entry (index bits) where one more bit measured to pay; returns (points, log).

    Greedy by distortion saved per extra byte: each map's gain is measured alone against the base
    allocation, then maps are upgraded best first, each kept only if the network's ratio stays
    >= min_ratio and the distortion drops."""
    split, dev, k = _split(data), data.device, codec["index_bits"]
    hooks = attach_precision(model, points, bits_in)
    try:
        ref = _outputs(model, split, dev)
    finally:
        for h in hooks:
            h.remove()
    cur = {p: list(b)[:3] + [k] for p, b in points.items()}
    d0, raw, enc0 = distortion(model, cur, codec, split, ref, dev)
    gains = []
    for p in cur:
        if k < cfg.max_index_bits:
            trial = {**cur, p: cur[p][:3] + [k + 1]}
            d, _, enc = distortion(model, trial, codec, split, ref, dev)
            if d < d0:
                gains.append(((d0 - d) / max(enc - enc0, 1), p))
    d_cur, tried = d0, []
    for _, p in sorted(gains, reverse=True):
        trial = {**cur, p: cur[p][:3] + [k + 1]}
        d, raw, enc = distortion(model, trial, codec, split, ref, dev)
        ok = raw / enc >= cfg.min_ratio and d < d_cur
        tried.append({"point": p, "index_bits": k + 1, "ratio": round(raw / enc, 4), "distortion": d, "kept": ok})
        if ok:
            cur, d_cur = trial, d
    _, raw, enc = distortion(model, cur, codec, split, ref, dev)
    log = {"split": "val" if split is data.val else "train", "min_ratio": cfg.min_ratio, "bits_in": bits_in,
           "distortion_before": d0, "distortion_after": d_cur, "ratio_after": round(raw / enc, 4), "tried": tried}
    return cur, log


def finetune(model, points: dict | None, codec: dict, data, cfg: FinetuneConfig, baseline, seed: int):
    """A copy trained `cfg.epochs` more with the codec on `points` (None: the uncoded control)."""
    from ..fmc.maps import FmcHooks
    from ..train import FitConfig, fit

    m = copy.deepcopy(model)
    fh = FmcHooks(m, points, codec) if points is not None else None
    try:
        fit(m, data, FitConfig(cfg.epochs, baseline.lr * cfg.lr_factor, baseline.batch_size, baseline.weight_decay,
                               baseline.optimizer), stage="fmc finetune" if fh else "fmc control", seed=seed + 1)
    finally:
        if fh is not None:
            fh.remove()
    return m
