"""`chaincomp fmc`: ASC feature-map compression measured on real tasks, against two baselines.

For each task: train (or load) a model, choose the coded maps as the `fmc` stage does, then for
each input precision (16-bit float maps; 8-bit: int8 with one scale per map) evaluate the task
metric with the maps at that precision uncoded (`metric_raw`), and coded by ASC, plain per-block
min-max quantization and a single-mode texture-block codec, each in constant (CBR) and variable
(VBR) bitrate. Ratios are raw bytes / stream bytes counted over the whole test split. Why here and
not in `chaincomp run`: one trained model serves all 12 codings, and the baselines sit beside ASC.

Recipe (all keys optional, unknown keys refused):

    name: fmc_default
    seed: 0
    threads: null
    tasks:
      - data: {name: digits}                   # chaincomp.recipe.DataConfig
        model: {name: digits_cnn, width: 0.5}  # chaincomp.recipe.ModelConfig (weights: skip training)
        baseline: {epochs: 8, lr: 0.05, batch_size: 64}
        points: auto                           # as the fmc stage
        bits_in: [16, 8]
        codec:                                 # one codec or a list; every row names its codec
          - {block: [1, 8, 8], fit_block: true, index_bits: 3, scales: [linear, hlog],
             allocate: {min_ratio: 4.0}}       # optional, see feature_maps_tune
          - {preset: paper}
        finetune: {epochs: 0, lr_factor: 0.1}  # codec-aware fine-tuning (ASC CBR, first bits_in)
    throughput: {batch: 32, repeats: 3}
"""
from __future__ import annotations

import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_serializer, model_validator

from ..device import DeviceName, describe, resolve
from ..recipe import (
    BaselineConfig,
    DataConfig,
    ModelConfig,
    RecipeName,
    Seed,
    Threads,
    read_yaml_recipe,
    validate_document,
)
from ..stages.fmc import (
    ENDPOINTS_HELP,
    CodecBlock,
    Endpoints,
    endpoints_kwargs,
    refuse_fit_with_preset,
    without_default_endpoints,
)
from .feature_maps_tune import AllocateConfig, FinetuneConfig, attach_precision

DEFAULT_RECIPE = "fmc_default"
METHODS = ("asc", "minmax", "single_mode")


class CodecConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    block: CodecBlock = (1, 8, 8)
    fit_block: bool = True
    index_bits: int = Field(3, ge=1, le=4)
    scales: list[Literal["linear", "log", "hlog", "rlog", "rhlog"]] = Field(["linear", "hlog"], min_length=1,
                                                                           max_length=4)
    preset: Literal["paper"] | None = Field(None, description="paper: ASC rows at the paper's operating point "
                                            "(16-value blocks, 2-bit indices, no scale flag); the baselines "
                                            "code the same blocks")
    allocate: AllocateConfig | None = Field(None, description="one more index bit on the maps where it measures "
                                            "to help, keeping the network's CBR ratio (feature_maps_tune)")
    endpoints: Endpoints = Field("range", description=ENDPOINTS_HELP + " (ASC and the baselines alike)")

    @model_validator(mode="after")
    def _preset_fixes_bits(self) -> "CodecConfig":
        if self.preset and self.allocate:
            raise ValueError(f"preset {self.preset} fixes the index bits; leave out allocate")
        refuse_fit_with_preset(self.preset, self.endpoints)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return without_default_endpoints(handler(self))

    def label(self) -> str:
        """How rows name this codec: the preset, else the block and index bits (+ alloc)."""
        if self.preset:
            return self.preset
        return ("x".join(map(str, self.block)) + f" k{self.index_bits}" + (" alloc" if self.allocate else "")
                + (" fit" if self.endpoints == "fit" else ""))

    def kwargs(self, bits: int, mode: str, method: str) -> dict:
        if self.preset and method == "asc":
            return {"bits_in": bits, "mode": mode, "preset": self.preset, "scales": list(self.scales)}
        from ..fmc import PRESETS

        k = PRESETS[self.preset].index_bits if self.preset else self.index_bits  # baselines at the preset's rate
        return {"bits_in": bits, "index_bits": k, "mode": mode, "method": method,
                "scales": list(self.scales)} | endpoints_kwargs(self.endpoints)


def _codecs(v):
    """One codec mapping is a list of one; validated here so its errors name `codec.KEY`, as written."""
    return [CodecConfig.model_validate(v)] if isinstance(v, dict) else v


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig(width=0.5)
    baseline: BaselineConfig = BaselineConfig(epochs=8, batch_size=64)
    points: Literal["auto"] | list[str] = "auto"
    bits_in: list[Literal[16, 8]] = Field([16, 8], min_length=1, max_length=2)
    codec: Annotated[list[CodecConfig], BeforeValidator(_codecs)] = Field(
        default_factory=lambda: [CodecConfig()], min_length=1, max_length=4,
        description="one codec, or a list (each gets every row; e.g. the default and the paper preset)")
    finetune: FinetuneConfig = FinetuneConfig()


class ThroughputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: int = Field(32, ge=1, le=4096, description="test inputs whose maps are timed")
    repeats: int = Field(3, ge=1, le=100)


class FmcRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: RecipeName = "fmc"
    seed: Seed = 0
    threads: Threads = None
    device: DeviceName = Field("auto", description="where baselines train; the codec study itself runs on the CPU")
    tasks: list[TaskConfig] = Field(default_factory=lambda: [TaskConfig()], min_length=1, max_length=16)
    throughput: ThroughputConfig = ThroughputConfig()


class TaskFile(BaseModel):
    """DIR/tasks/NN.json: one finished task, reused by --resume when its digest matches."""
    model_config = ConfigDict(extra="allow")
    digest: str
    asc: list[dict]
    baselines: list[dict]
    extras: dict


def validate_fmc_recipe(obj: object, source: str) -> FmcRecipe:
    """Everything checked before any training; `chaincomp check` and `chaincomp fmc` both call this."""
    return validate_document(FmcRecipe, obj, source)


def load_fmc_recipe(path: str | None) -> FmcRecipe:
    """A recipe file, or a built-in `fmc_*` recipe by name (`fmc_default` when none is given)."""
    obj, _, source = read_yaml_recipe(path, DEFAULT_RECIPE, prefix="fmc_")
    return validate_fmc_recipe(obj, source)


# ------------------------------------------------------------------------------------ measuring

def _num(x: float) -> float | None:
    """JSON has no infinity: an exact coding (infinite SNR) is written as null."""
    return round(x, 4) if math.isfinite(x) else None


def _snr(stats: dict) -> float:
    sig, sse = sum(s["signal"] for s in stats.values()), sum(s["sse"] for s in stats.values())
    return 10 * math.log10(sig / sse) if sse > 0 else float("inf")


def _hist(stats: dict) -> dict:
    out: dict = {}
    for s in stats.values():
        for group, counts in s["mode_histogram"].items():
            for k, v in counts.items():
                out.setdefault(group, {})[k] = out.setdefault(group, {}).get(k, 0) + v
    return out


def throughput(model, points, data, cfg: FmcRecipe, codec: dict) -> dict:
    """Encode/decode MB/s of ASC on the task's real float16 maps (median of repeats, one process).
    `path`: "native" when the maps are on the CPU and the fused C kernel is available (what `encode`
    then runs, CBR and VBR encode, `endpoints: fit` included), else "torch"."""
    import torch

    from ..fmc import decode, encode, native
    from ..fmc.maps import point_codec

    modules, maps = dict(model.named_modules()), {}
    hooks = [modules[p].register_forward_hook(lambda _m, _i, o, p=p: maps.__setitem__(p, o.detach().half()))
             for p in points]
    x, _ = next(data.test.batches(cfg.throughput.batch))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    raw = sum(m.numel() * 2 for m in maps.values()) / 1e6
    on_cpu = all(m.device.type == "cpu" for m in maps.values())
    res = {"raw_mb": round(raw, 4),
           "path": "native" if on_cpu and native.enabled() and native.library() is not None else "torch"}
    for mode in ("cbr", "vbr"):
        kw = {**codec, "bits_in": 16, "mode": mode}
        enc_t, dec_t = [], []
        for _ in range(cfg.throughput.repeats):
            t0 = time.perf_counter()
            streams = [encode(m, block=b, **c) for p, m in maps.items() for b, c in [point_codec(points[p], kw)]]
            t1 = time.perf_counter()
            for s in streams:
                decode(s)
            enc_t.append(t1 - t0)
            dec_t.append(time.perf_counter() - t1)
        res[f"encode_mbps_{mode}"] = round(raw / statistics.median(enc_t), 2)
        res[f"decode_mbps_{mode}"] = round(raw / statistics.median(dec_t), 2)
    return res


AGREE = {"classification": "top-1 agreement with raw maps (%)", "segmentation": "pixel agreement with raw maps (%)",
         "super_resolution": "PSNR of the output against the raw-map output (dB)"}


def _predict(model, data) -> tuple[float, list]:
    """Test metric and the final outputs (kept to compare codings with the uncoded maps)."""
    from ..train import metric_of, outputs_and_targets

    outs, ys = outputs_and_targets(model, data.test)
    preds = [o[-1] for o in outs]
    return metric_of(data, preds, ys), preds


def agreement(task: str, preds: list, ref: list) -> float:
    """How much coding changed the answers, free of label noise: the share of inputs (classification)
    or pixels (segmentation) whose arg-max class is unchanged, or the PSNR of the super-resolved
    output against the output with uncoded maps (both clamped to [0, 1]; inf if identical)."""
    if task in ("classification", "segmentation"):
        same = sum(int((p.argmax(1) == r.argmax(1)).sum()) for p, r in zip(preds, ref))
        return 100.0 * same / sum(r.argmax(1).numel() for r in ref)
    sse = sum(float((p.clamp(0, 1) - r.clamp(0, 1)).double().square().sum()) for p, r in zip(preds, ref))
    n = sum(r.numel() for r in ref)
    return 10 * math.log10(n / sse) if sse > 0 else float("inf")


def _raw(model, data, points, bits: int) -> tuple[float, list]:
    """Metric and outputs with the maps at `bits` precision, uncoded (`metric_raw`)."""
    hooks = attach_precision(model, points, bits)
    try:
        return _predict(model, data)
    finally:
        for h in hooks:
            h.remove()


def _coded(model, data, points: dict, c: CodecConfig, bits: int, method: str, ref: list) -> tuple[dict, dict]:
    """Row fields of one (codec, bits_in, method) in CBR and VBR, and the VBR per-map stats."""
    from ..fmc.maps import FmcHooks

    row, vbr = {}, {}
    for mode in ("cbr", "vbr"):
        fh = FmcHooks(model, points, c.kwargs(bits, mode, method))
        try:
            m, preds = _predict(model, data)
            tot, st = fh.total(), fh.stats()
            payload = sum(h.total()["payload_bytes"] for h in fh.handles.values())
            dram = fh.profile(model, data.sample_input()).total()["dram_bytes"]
        finally:
            fh.remove()
        row |= {f"metric_{mode}": round(m, 4), f"ratio_{mode}": round(tot["ratio"], 4),
                f"payload_ratio_{mode}": round(tot["raw_bytes"] / payload, 4),
                f"bits_per_value_{mode}": round(bits * tot["encoded_bytes"] / tot["raw_bytes"], 4),
                f"snr_db_{mode}": _num(_snr(st)), f"dram_bytes_{mode}": round(dram, 1),
                f"agree_{mode}": _num(agreement(data.task, preds, ref)),
                f"ratio_by_map_{mode}": {p: round(s["ratio"], 4) for p, s in st.items()}}
        vbr = st
    return row, vbr


def run_task(t: TaskConfig, cfg: FmcRecipe, data=None) -> tuple[list[dict], list[dict], dict]:
    """Train/load, then every (codec, bits_in, method, mode), then codec-aware fine-tuning of ASC at the
    first bits_in beside its uncoded control (`feature_maps_tune`); returns (ASC rows, baseline rows, extras).
    `data`: the task's data already loaded (e.g. with another test set), else loaded from `t.data`."""
    from .. import progress
    from ..chain import placed, train_baseline
    from ..data import load_data
    from ..energy.cost import profile_model
    from ..fmc.maps import resolve_points
    from ..recipe import Recipe
    from .feature_maps_tune import allocate, finetune

    data = data if data is not None else placed(load_data(t.data, cfg.seed), cfg)
    model = train_baseline(Recipe(name=cfg.name, seed=cfg.seed, data=t.data, model=t.model, baseline=t.baseline), data)
    sample = data.sample_input()
    fp32, _ = _predict(model, data)
    common = {"task": data.task, "dataset": data.name, "model": t.model.name, "metric_name": data.metric_name,
              "metric_fp32": round(fp32, 4), "dram_bytes_fp32": profile_model(model, sample).total()["dram_bytes"]}
    asc, base, hist, extras = [], [], {}, {"dataset": data.name, "model": t.model.name, "points_by_codec": {},
                                            "allocation": {}, "throughput_by_codec": {}}
    raws, controls = {}, {}
    for ci, c in enumerate(t.codec):
        label = c.label()
        points = resolve_points(model, sample, t.points, c.block, c.fit_block, c.preset)
        if c.allocate:
            points, extras["allocation"][label] = allocate(model, points, c.kwargs(t.bits_in[0], "cbr", "asc"), data,
                                                           c.allocate, t.bits_in[0])
        for bits in t.bits_in:
            raw, ref = raws[(bits, tuple(points))] = _raw(model, data, points, bits)
            for method in METHODS:
                row = {**common, "codec": label, "finetune_epochs": 0, "method": method, "bits_in": bits,
                       "metric_raw": round(raw, 4), "agree_name": AGREE[data.task]}
                fields, st = _coded(model, data, points, c, bits, method, ref)
                row |= fields | {"delta_cbr": round(fields["metric_cbr"] - raw, 4),
                                 "delta_vbr": round(fields["metric_vbr"] - raw, 4)}
                (asc if method == "asc" else base).append(row)
                if ci == 0 and method == "asc" and bits == t.bits_in[0]:
                    hist = {"bits_in": bits, **_hist(st)}
                progress.log(f"{data.name} {t.model.name} [{label}] {bits}-bit {method}: {data.metric_name} raw {raw:.3f}, "
                             f"cbr {row['metric_cbr']:.3f} ({row['ratio_cbr']:.2f}x), "
                             f"vbr {row['metric_vbr']:.3f} ({row['ratio_vbr']:.2f}x)")
        if t.finetune.epochs:
            bits, raw = t.bits_in[0], raws[(t.bits_in[0], tuple(points))][0]
            if (bits, tuple(points)) not in controls:
                control = finetune(model, None, {}, data, t.finetune, t.baseline, cfg.seed)
                controls[(bits, tuple(points))] = _raw(control, data, points, bits)[0]
            ctl = controls[(bits, tuple(points))]
            tuned = finetune(model, points, c.kwargs(bits, "cbr", "asc"), data, t.finetune, t.baseline, cfg.seed)
            own, own_ref = _raw(tuned, data, points, bits)
            fields, _ = _coded(tuned, data, points, c, bits, "asc", own_ref)
            row = {**common, "codec": label, "finetune_epochs": t.finetune.epochs, "method": "asc", "bits_in": bits,
                   "metric_raw": round(raw, 4), "agree_name": AGREE[data.task], **fields,
                   "metric_raw_finetuned": round(own, 4), "metric_raw_control": round(ctl, 4)}
            for mode in ("cbr", "vbr"):
                row[f"delta_{mode}"] = round(row[f"metric_{mode}"] - raw, 4)
                row[f"delta_{mode}_control"] = round(row[f"metric_{mode}"] - ctl, 4)
            asc.append(row)
            progress.log(f"{data.name} [{label}] fine-tuned {t.finetune.epochs} epochs: cbr {row['metric_cbr']:.3f} "
                         f"({row['delta_cbr']:+.3f}; control {ctl:.3f}, {row['delta_cbr_control']:+.3f})")
        kw = {k: v for k, v in c.kwargs(16, "cbr", "asc").items() if k not in ("bits_in", "mode")}
        extras["points_by_codec"][label] = points
        extras["throughput_by_codec"][label] = throughput(model, points, data, cfg, kw)
    first = t.codec[0].label()
    extras |= {"points": extras["points_by_codec"][first], "throughput": extras["throughput_by_codec"][first],
               "mode_histogram": hist}
    return asc, base, extras


def task_digest(t: TaskConfig, cfg: FmcRecipe) -> str:
    """Identity of one task's results: its settings, the seed and the throughput settings."""
    import hashlib
    import json

    part = {"seed": cfg.seed, "task": t.model_dump(mode="json"), "throughput": cfg.throughput.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def _task(i: int, t: TaskConfig, cfg: FmcRecipe, out: Path, resume: bool) -> tuple[list[dict], list[dict], dict]:
    """One task, saved to DIR/tasks/NN.json when it ends. With --resume a task saved with the same settings
    is reused (a task is minutes of training; a killed run loses only the task it was in)."""
    from .. import faults, progress
    from ..io import read_model_json, write_json

    f, digest = out / "tasks" / f"{i:02d}.json", task_digest(t, cfg)
    if resume and f.exists():
        saved = read_model_json(f, TaskFile, allow_nan=True)
        if saved.digest == digest:
            progress.log(f"task {i} ({t.data.name}): reused from {f}")
            return saved.asc, saved.baselines, saved.extras
    a, b, e = run_task(t, cfg)
    write_json(f, {"digest": digest, "asc": a, "baselines": b, "extras": e})
    faults.point("fmc_task_saved")
    return a, b, e


def run_fmc(cfg: FmcRecipe, out: str | Path, resume: bool = False) -> dict:
    """All tasks of a recipe into DIR/fmc.json and DIR/fmc.md. fmc.json is dropped first and written
    last, so it exists only when every file beside it belongs to the run that wrote it."""
    import torch

    from ..io import RunLock, write_json
    from ..report import machine_info

    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    with RunLock(out):
        (out / "fmc.json").unlink(missing_ok=True)
        tasks, baselines, extras = [], [], []
        for i, t in enumerate(cfg.tasks):
            a, b, e = _task(i, t, cfg, out, resume)
            for row in a + b:
                row["task_index"] = i  # a recipe may hold the same dataset twice (other points, codec)
            tasks += a
            baselines += b
            extras.append(e)
        res = {"recipe": cfg.model_dump(mode="json"), "device": describe(resolve(cfg.device)), "tasks": tasks, "baselines": baselines, "details": extras,
               "machine": machine_info(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "seconds": round(time.perf_counter() - t0, 1)}
        from .feature_maps_report import write_report

        write_report(out, res)
        write_json(out / "fmc.json", res)
    return res


