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
        codec: {block: [1, 8, 8], fit_block: true, index_bits: 3, scales: [linear, hlog]}
    throughput: {batch: 32, repeats: 3}
"""
from __future__ import annotations

import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
from ..stages.fmc import CodecBlock

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


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig(width=0.5)
    baseline: BaselineConfig = BaselineConfig(epochs=8, batch_size=64)
    points: Literal["auto"] | list[str] = "auto"
    bits_in: list[Literal[16, 8]] = Field([16, 8], min_length=1, max_length=2)
    codec: CodecConfig = CodecConfig()


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


def _num(x: float) -> float | None:
    """JSON has no infinity: an exact coding (infinite SNR) is written as null."""
    return round(x, 4) if math.isfinite(x) else None


def _fmt(x, spec: str = ".2f") -> str:
    return "exact" if x is None else format(x, spec)


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
    then runs, CBR and VBR encode), else "torch"."""
    import torch

    from ..fmc import decode, encode, native

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
            streams = [encode(m, block=tuple(points[p]), **kw) for p, m in maps.items()]
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


def run_task(t: TaskConfig, cfg: FmcRecipe) -> tuple[list[dict], list[dict], dict]:
    """Train/load, then every (bits_in, method, mode); returns (ASC rows, baseline rows, extras)."""
    from .. import progress
    from ..chain import train_baseline
    from ..data import load_data
    from ..energy.cost import profile_model
    from ..fmc.maps import FmcHooks, resolve_points
    from ..recipe import Recipe
    from ..stages.fmc import FmcConfig

    from ..chain import placed
    data = placed(load_data(t.data, cfg.seed), cfg)
    model = train_baseline(Recipe(name=cfg.name, seed=cfg.seed, data=t.data, model=t.model, baseline=t.baseline), data)
    sample = data.sample_input()
    c = t.codec
    stage = FmcConfig(points=t.points, block=c.block, fit_block=c.fit_block, index_bits=c.index_bits, scales=c.scales)
    points = resolve_points(model, sample, stage.points, stage.block, stage.fit_block, c.preset)
    fp32, _ = _predict(model, data)
    common = {"task": data.task, "dataset": data.name, "model": t.model.name, "metric_name": data.metric_name,
              "metric_fp32": round(fp32, 4), "dram_bytes_fp32": profile_model(model, sample).total()["dram_bytes"]}
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    hist = {}
    for bits in t.bits_in:
        hooks = attach_precision(model, points, bits)
        raw, ref = _predict(model, data)
        for h in hooks:
            h.remove()
        for method in METHODS:
            row = {**common, "method": method, "bits_in": bits, "metric_raw": round(raw, 4),
                   "agree_name": AGREE[data.task]}
            for mode in ("cbr", "vbr"):
                codec = {"bits_in": bits, "mode": mode, "preset": c.preset, "scales": list(c.scales)} \
                    if c.preset and method == "asc" else \
                    {"bits_in": bits, "index_bits": c.index_bits, "mode": mode, "method": method,
                     "scales": list(c.scales)}
                fh = FmcHooks(model, points, codec)
                try:
                    m, preds = _predict(model, data)
                    tot, st = fh.total(), fh.stats()
                    dram = fh.profile(model, sample).total()["dram_bytes"]
                finally:
                    fh.remove()
                row |= {f"metric_{mode}": round(m, 4), f"ratio_{mode}": round(tot["ratio"], 4),
                        f"bits_per_value_{mode}": round(bits * tot["encoded_bytes"] / tot["raw_bytes"], 4),
                        f"snr_db_{mode}": _num(_snr(st)), f"dram_bytes_{mode}": round(dram, 1),
                        f"agree_{mode}": _num(agreement(data.task, preds, ref))}
                if method == "asc" and mode == "vbr" and bits == t.bits_in[0]:
                    hist = {"bits_in": bits, **_hist(st)}
            row["delta_cbr"] = round(row["metric_cbr"] - raw, 4)
            row["delta_vbr"] = round(row["metric_vbr"] - raw, 4)
            rows[method].append(row)
            progress.log(f"{data.name} {t.model.name} {bits}-bit {method}: {data.metric_name} raw {raw:.3f}, "
                         f"cbr {row['metric_cbr']:.3f} ({row['ratio_cbr']:.2f}x), "
                         f"vbr {row['metric_vbr']:.3f} ({row['ratio_vbr']:.2f}x)")
    kw = {"index_bits": c.index_bits, "scales": list(c.scales), "method": "asc"}
    extras = {"dataset": data.name, "model": t.model.name, "points": points, "mode_histogram": hist,
              "throughput": throughput(model, points, data, cfg, kw)}
    return rows["asc"], rows["minmax"] + rows["single_mode"], extras


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
        write_report(out, res)
        write_json(out / "fmc.json", res)
    return res


# -------------------------------------------------------------------------------------- report

def write_report(out: Path, res: dict) -> None:
    """fmc.md: quality and ratio per task and method, the histogram of chosen modes, throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_text
    from ..report import save_figure

    details = res["details"]
    fig, axes = plt.subplots(1, len(details), figsize=(5 * len(details), 3.4), squeeze=False)
    for ax, d in zip(axes[0], details):
        h = d["mode_histogram"]
        labels = [f"mode {k}" for k in h["mode"]] + [f"scale {k}" for k in h["scale"]] + [f"tag {k}" for k in h["tag"]]
        values = list(h["mode"].values()) + list(h["scale"].values()) + list(h["tag"].values())
        ax.bar(range(len(values)), values,
               color=["C0"] * len(h["mode"]) + ["C1"] * len(h["scale"]) + ["C2"] * len(h["tag"]))
        ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("blocks")
        ax.set_title(f"{d['model']} on {d['dataset']} (ASC, VBR, {h['bits_in']}-bit)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "fmc_modes.png")

    m = res["machine"]
    lines = ["# Feature-map compression (ASC) on real tasks", "",
             f"{res['date']}, {m['processor']} ({m['cpus']} CPUs, {m['threads']} torch threads), torch {m['torch']}; "
             f"{res['seconds']} s in all. Ratio = raw bytes (numel x bits_in / 8) / stream bytes, counted over "
             "the test split, headers included. `raw`: maps at bits_in precision, uncoded. "
             "Definitions: docs/fmc.md.", "",
             "`agree`: top-1 (or pixel) agreement with the uncoded-map answers in %, or for super-resolution the "
             "PSNR of the output against the uncoded-map output in dB: the codec's effect free of label noise.", "",
             "| dataset | model | bits_in | method | metric | fp32 | raw | CBR | CBR x | VBR | VBR x | SNR dB (CBR) "
             "| agree CBR | agree VBR |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(res["tasks"] + res["baselines"], key=lambda r: (r["dataset"], -r["bits_in"])):
        lines.append(f"| {r['dataset']} | {r['model']} | {r['bits_in']} | {r['method']} | {r['metric_name']} "
                     f"| {r['metric_fp32']:.3f} | {r['metric_raw']:.3f} | {r['metric_cbr']:.3f} | {r['ratio_cbr']:.2f} "
                     f"| {r['metric_vbr']:.3f} | {r['ratio_vbr']:.2f} | {_fmt(r['snr_db_cbr'])} "
                     f"| {_fmt(r['agree_cbr'])} | {_fmt(r['agree_vbr'])} |")
    lines += ["", "Modelled DRAM traffic per inference (weights once + activations in/out, coded maps at their "
              "counted size), ASC:", "", "| dataset | bits_in | fp32 | CBR | VBR |", "|---|---|---|---|---|"]
    for r in res["tasks"]:
        lines.append(f"| {r['dataset']} | {r['bits_in']} | {r['dram_bytes_fp32']:.0f} B | {r['dram_bytes_cbr']:.0f} B "
                     f"| {r['dram_bytes_vbr']:.0f} B |")
    lines += ["", "Throughput of ASC on each task's float16 maps (one process, median of repeats):", "",
              "| dataset | maps MB | codec path | encode CBR MB/s | decode CBR MB/s | encode VBR MB/s | decode VBR MB/s |",
              "|---|---|---|---|---|---|---|"]
    for d in details:
        t = d["throughput"]
        lines.append(f"| {d['dataset']} | {t['raw_mb']:.3f} | {t.get('path', 'torch')} | {t['encode_mbps_cbr']} "
                     f"| {t['decode_mbps_cbr']} | {t['encode_mbps_vbr']} | {t['decode_mbps_vbr']} |")
    lines += ["", "Coded maps and blocks: " + "; ".join(
        f"{d['dataset']}: " + ", ".join(f"{p} {tuple(b)}" for p, b in d["points"].items()) for d in details),
        "", "![modes](fmc_modes.png)", ""]
    atomic_write_text(out / "fmc.md", "\n".join(lines))


# ----------------------------------------------------------------------------------------- cli
