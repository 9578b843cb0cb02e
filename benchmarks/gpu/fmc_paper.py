"""ASC feature-map compression at the paper's operating point (issue 13): EDSR x2 (Set5 and Set14) and a
CIFAR-10 ResNet-20, each trained to convergence (or loaded from the baseline cache), coded at
`preset: paper` (exactly 4 bits per 16-bit value) and at the default codec, then fine-tuned with the codec
in the forward pass (straight-through) beside an uncoded control trained for the same budget.

Writes OUT/summary.json and OUT/summary.md (per task and codec: metric lost against uncoded maps and
against the control, CBR / VBR ratio, per-map VBR ratios, codec throughput on the device), and the fmc
study's own folder OUT/fmc (fmc.json, fmc.md). The study evaluates on the CPU; training, fine-tuning
(codec included) and the throughput timing run on --device.

Sized for 9 minutes on one H200 from ../shared/device/README.md's throughputs (ResNet-20 about 76k img/s:
200 epochs of 48k images about 2 min; EDSR-small on about 2,200 patches: 150 epochs, estimated 1-2 min),
the rest in the CPU evaluation. NOT yet run on a GPU: the session that wrote it had none. A rerun after a
timeout reuses the cached baselines (OUT/cache). `--smoke` runs the same code at toy size on the CPU
(digits and sklearn's two photos, one epoch each); tests/test_gpu_scripts.py runs it.

    python benchmarks/gpu/fmc_paper.py OUT [--device cuda]
    python benchmarks/gpu/fmc_paper.py OUT --smoke
"""
from __future__ import annotations

import statistics
import time

from common import environment, finish, parse

import torch

CODECS = [{"preset": "paper"}, {"block": [1, 8, 8], "index_bits": 3, "scales": ["linear", "hlog"]}]
FULL = [
    {"data": {"name": "cifar10", "val_size": 2000, "limit_test": 5000}, "model": {"name": "resnet20", "width": 1.0},
     "baseline": {"epochs": 200, "lr": 0.2, "batch_size": 256, "weight_decay": 0.0005},
     "finetune": {"epochs": 10, "lr_factor": 0.05}},
    {"data": {"name": "sr", "scale": 2}, "model": {"name": "edsr_small", "width": 1.0},
     "baseline": {"epochs": 150, "lr": 0.001, "batch_size": 16, "optimizer": "adam", "weight_decay": 0.0},
     "finetune": {"epochs": 15, "lr_factor": 0.1}},
]
SMOKE = [
    {"data": {"name": "digits", "limit_train": 200, "limit_test": 60}, "model": {"name": "digits_cnn", "width": 0.25},
     "baseline": {"epochs": 1, "lr": 0.05, "batch_size": 64}, "finetune": {"epochs": 1, "lr_factor": 0.1}},
    {"data": {"name": "sr_sample", "scale": 2}, "model": {"name": "edsr_small", "width": 0.25},
     "baseline": {"epochs": 1, "lr": 0.001, "batch_size": 16, "optimizer": "adam", "weight_decay": 0.0},
     "finetune": {"epochs": 1, "lr_factor": 0.1}},
]


def recipe(smoke: bool, device: str):
    from chaincomp.studies.feature_maps import validate_fmc_recipe

    tasks = [{**t, "points": "auto", "bits_in": [16], "codec": CODECS} for t in (SMOKE if smoke else FULL)]
    return validate_fmc_recipe({"name": "fmc_paper", "seed": 0, "device": device, "tasks": tasks,
                                "throughput": {"batch": 4 if smoke else 32, "repeats": 1 if smoke else 3}},
                               "fmc_paper.py")


def baseline(t, cfg):
    """The task's data and trained model; trained once into the cache, so the study (and a rerun) reuse it."""
    from chaincomp import baselines
    from chaincomp.chain import placed, train_baseline
    from chaincomp.data import load_data
    from chaincomp.recipe import Recipe

    r = Recipe(name=cfg.name, seed=cfg.seed, device=cfg.device, data=t.data, model=t.model, baseline=t.baseline)
    data = placed(load_data(t.data, cfg.seed), cfg)
    ident = baselines.of_recipe(r)
    cached = all(f.is_file() for f in baselines.paths(baselines.digest(ident)))
    t0 = time.perf_counter()
    model = train_baseline(r, data)
    trained = time.perf_counter() - t0
    if not cached:
        baselines.store(model, ident, {"device": str(data.device), "seconds": round(trained, 1)})
    return data, model, round(trained, 1)


def device_throughput(model, points: dict, data, codec: dict, device: str, batch: int, repeats: int) -> dict:
    """Encode / decode MB/s of the task's float16 maps with the codec running on `device` (synchronised)."""
    from chaincomp.device import resolve
    from chaincomp.fmc import decode, encode
    from chaincomp.fmc.maps import point_codec

    dev = resolve(device, "--device")
    modules, maps = dict(model.named_modules()), {}
    hooks = [modules[p].register_forward_hook(lambda _m, _i, o, p=p: maps.__setitem__(p, o.detach().half()))
             for p in points]
    x, _ = next(data.test.batches(batch))
    model.cpu().eval()
    with torch.no_grad():
        model(x.cpu())
    for h in hooks:
        h.remove()
    maps = {p: m.to(dev) for p, m in maps.items()}
    raw = sum(m.numel() * 2 for m in maps.values()) / 1e6

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    res = {"device": str(dev), "raw_mb": round(raw, 4)}
    for mode in ("cbr", "vbr"):
        kw = {**codec, "bits_in": 16, "mode": mode}
        args = {p: point_codec(points[p], kw) for p in maps}
        enc_t, dec_t = [], []
        for i in range(repeats + 1):  # the first pass warms up (kernels, allocator); not timed
            sync()
            t0 = time.perf_counter()
            streams = [encode(m, block=args[p][0], **args[p][1]) for p, m in maps.items()]
            sync()
            t1 = time.perf_counter()
            for s in streams:
                decode(s, device=dev)
            sync()
            if i:
                enc_t.append(t1 - t0)
                dec_t.append(time.perf_counter() - t1)
        res[f"encode_mbps_{mode}"] = round(raw / statistics.median(enc_t), 2)
        res[f"decode_mbps_{mode}"] = round(raw / statistics.median(dec_t), 2)
    return res


def summarise(rows: list[dict], test_set: str) -> dict:
    """Per codec: the metric lost with and without codec-aware fine-tuning, ratios, per-map VBR ratios."""
    out = {}
    for r in rows:
        key = f"{r['dataset']}/{test_set} {r['model']} [{r['codec']}] ft {r['finetune_epochs']}"
        out[key] = {"metric": r["metric_name"], "raw": r["metric_raw"], "cbr": r["metric_cbr"],
                    "loss_cbr": round(-r["delta_cbr"], 4), "loss_vbr": round(-r["delta_vbr"], 4),
                    "ratio_cbr": r["ratio_cbr"], "ratio_vbr": r["ratio_vbr"],
                    "vbr_ratio_by_map": r["ratio_by_map_vbr"], "snr_db_cbr": r["snr_db_cbr"]}
        if "metric_raw_control" in r:
            out[key] |= {"control_raw": r["metric_raw_control"], "loss_cbr_vs_control": round(-r["delta_cbr_control"], 4)}
    return out


def main() -> int:
    a = parse(__doc__)
    t0 = time.perf_counter()
    from chaincomp.studies.feature_maps import run_fmc, run_task

    cfg = recipe(a.smoke, a.device)
    env = environment(a.device)
    trained = {}
    for t in cfg.tasks:
        _, _, trained[f"{t.data.name} {t.model.name}"] = baseline(t, cfg)
    res = run_fmc(cfg, a.out / "fmc", resume=True)
    tasks, throughput = {}, {}
    for i, t in enumerate(cfg.tasks):
        data, model, _ = baseline(t, cfg)
        rows = [r for r in res["tasks"] if r["task_index"] == i]
        tasks |= summarise(rows, "test")
        extra = {k: s for k, s in data.info.get("test_sets", {}).items() if s is not data.test}
        if a.smoke and data.task == "super_resolution":
            extra = {"val (smoke stand-in for set14)": data.val}
        for name, split in extra.items():   # e.g. Set14 beside Set5 (the study's test set)
            data.test = split
            asc, _, _ = run_task(t, cfg, data=data)
            tasks |= summarise(asc, name)
        for label, points in res["details"][i]["points_by_codec"].items():
            c = next(c for c in t.codec if c.label() == label)
            kw = {k: v for k, v in c.kwargs(16, "cbr", "asc").items() if k not in ("bits_in", "mode")}
            throughput[f"{t.data.name} {t.model.name} [{label}]"] = device_throughput(
                model, points, data, kw, a.device, cfg.throughput.batch, cfg.throughput.repeats)
    summary = {"smoke": a.smoke, **env, "ran_on_gpu": env["device"].startswith("cuda"),
               "baseline_seconds": trained, "tasks": tasks, "throughput_on_device": throughput}
    return finish(a.out, "fmc_paper", summary, t0)


if __name__ == "__main__":
    raise SystemExit(main())
