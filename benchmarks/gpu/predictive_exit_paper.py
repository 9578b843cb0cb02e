"""Predictive Exit at the paper's scale: VGG-19 and ResNet-34 on CIFAR-10, built the authors' way
(exits after every conv and pool, inside residual blocks too; their BoF head with shared FC layers;
backbone first, then backbone and exits jointly on the sum of every output's cross-entropy; T_l as
their script computes it; L0 = 6), compared with classic inference and early exit (max softmax,
entropy, max|logit|), both predictive engines (max|logit| as the paper, max softmax as the group's
later code). The paper's four figures side by side with ours, two ways each:
- at EQUAL test top-1 (the classic network's - 0.25 points) on every way's threshold sweep curve
  (studies/predictive_exit/compare.py), energy modelled on jetson_tx2_gpu (DVFS, guarded policy,
  latency limit 1.1 x classic at the top point);
- "up to": every input leaving at the first exit checked (the paper's 96.2% is this figure on its
  ResNet-34), and the largest reduction against the best early exit over targets down to 5 points
  below classic. A ceiling, not an equal-accuracy figure.
Wall latency is not measured here (batch-1 latency on an H200 says nothing about a Jetson).

Sized for 9 minutes on one H200 from ../shared/device/README.md's throughputs (VGG-19 59k img/s,
ResNet-34 21k img/s fp32, more under bf16 autocast): VGG-19 40 + 15 epochs, ResNet-34 30 + 10.
NOT yet run on a GPU: this session had none. `--smoke` runs the same code at toy size on the CPU
(digits upscaled to 32x32 RGB, width 1/16, 8 codewords, one epoch each) in well under a minute; a test runs it.

    python benchmarks/gpu/predictive_exit_paper.py OUT [--device cuda] [--models vgg19,resnet34]
    python benchmarks/gpu/predictive_exit_paper.py OUT --smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PAPER = {"computation_reduction_vs_classic": 96.2, "energy_saving_vs_classic": 72.9,
         "computation_reduction_vs_early_exit": 12.8, "energy_saving_vs_early_exit": 37.6}
FULL = {"vgg19": {"width": 1.0, "epochs": 40, "joint": 15, "lr": 0.05, "sweep": 40, "codewords": 64},
        "resnet34": {"width": 1.0, "epochs": 30, "joint": 10, "lr": 0.1, "sweep": 40, "codewords": 64}}
SMOKE = {m: {"width": 0.0625, "epochs": 1, "joint": 1, "lr": 0.05, "sweep": 6, "codewords": 8} for m in FULL}
L0, BATCH = 6, 256


def load(smoke: bool, seed: int = 0):
    """(train, val, test) as (x, y) tensors; CIFAR-10 via chaincomp's loader, or digits at 32x32 RGB."""
    from chaincomp.data import load_data
    from chaincomp.recipe import DataConfig

    if smoke:
        d = load_data(DataConfig(name="digits"), seed=seed)
        up = lambda x: F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        return [(up(s.x), s.y) for s in (d.train, d.val, d.test)]
    d = load_data(DataConfig(name="cifar10", val_size=5000), seed=seed)
    return [(s.x, s.y) for s in (d.train, d.val, d.test)]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (padding 4) and horizontal flip, batched on the data's device: two gathers, no
    per-image Python loop (a GPU step stays a handful of kernels)."""
    n, c, h, w = x.shape
    p = F.pad(x, (4, 4, 4, 4))
    i = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    j = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 8)
    out = p.gather(2, rows)
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    out = out.gather(3, cols)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def fit(model, train, epochs: int, lr: float, device: torch.device, seed: int) -> None:
    """SGD + Nesterov, one-cycle cosine, bf16 autocast on CUDA; the loss sums every output's CE."""
    x, y = train
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for s in range(0, len(x), BATCH):
            idx = order[s:s + BATCH]
            xb = augment(x[idx], gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(xb)
                outs = out if isinstance(out, (list, tuple)) else [out]
                loss = sum(F.cross_entropy(o.float(), y[idx]) for o in outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def outputs(net, x: torch.Tensor) -> list[torch.Tensor]:
    net.eval()
    outs = [net(x[i:i + 1024]) for i in range(0, len(x), 1024)]
    return [torch.cat([o[k] for o in outs]).float().cpu() for k in range(len(outs[0]))]


@torch.no_grad()
def authors_T(net, train, seed: int, limit: int = 5000) -> list[float]:
    """Their T_l: |signed mean logit| over ~5k augmented training images, network in train mode (copy)."""
    probe = copy.deepcopy(net).train()
    gen = torch.Generator().manual_seed(seed)
    x = train[0][:limit]
    sums, n = None, 0
    for s in range(0, len(x), BATCH):
        outs = probe(augment(x[s:s + BATCH], gen))[:-1]
        v = [o.double().sum().item() for o in outs]
        sums = v if sums is None else [a + b for a, b in zip(sums, v)]
        n += outs[0].numel()
    return [abs(v / n) for v in sums]


def study(name: str, size: dict, data, device: torch.device, seed: int = 0) -> dict:
    from chaincomp.energy.profiles import load_profile
    from chaincomp.exits.fine import authors_network
    from chaincomp.exits.runtime import CostTable, PlatformModel, Trace, traces_from_paths
    from chaincomp.models import build_model
    from chaincomp.studies.predictive_exit.compare import best_vs_early_exit, brackets, macs_curve, readout, up_to
    from chaincomp.studies.predictive_exit.figures import accuracy
    from chaincomp.studies.predictive_exit.runner import simulators
    from chaincomp.studies.predictive_exit.schema import PredictiveConfig

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train, val, test = [(x.to(device), y.to(device)) for x, y in data]
    model = build_model(name, num_classes=10, width=size["width"]).to(device)
    fit(model, train, size["epochs"], size["lr"], device, seed)
    backbone_top1 = float((outputs(model, test[0])[0].argmax(-1) == test[1].cpu()).double().mean() * 100)
    net = authors_network(model, 10, train[0][:2], codewords=size["codewords"]).to(device)
    fit(net, train, size["joint"], size["lr"] / 5, device, seed + 1)
    T = authors_T(net, train, seed)
    va, te = outputs(net, val[0]), outputs(net, test[0])
    yv, yt = val[1].cpu(), test[1].cpu()
    t_train = time.perf_counter() - t0

    cpu_net = copy.deepcopy(net).cpu().eval()
    costs = CostTable(cpu_net, test[0][:1].cpu())
    profile = load_profile("jetson_tx2_gpu")
    pm = PlatformModel(costs, profile, guarded=True)
    deadline = 1.1 * pm.classic_cycles / profile.top().freq_hz
    points = cpu_net.exit_points
    p = PredictiveConfig(start_block=L0, sweep_points=size["sweep"])
    sims = simulators(va[:-1], points, T, p)
    sweeps = {}
    for way, (settings, make) in sims.items():
        sim = make(te)
        rows = []
        for st in settings:
            paths = sim(st)
            rows.append({"setting": st, "test_metric": accuracy(te, paths, yt),
                         "test_macs": float(costs.paths_total(paths).mean()),
                         "test_ops_j": float(costs.paths_total(paths, "ops_j").mean())})
        sweeps[way] = rows
    classic_top1 = float((te[-1].argmax(-1) == yt).double().mean() * 100)
    target = classic_top1 - 0.25
    n_blocks = len(cpu_net.blocks)
    for way, b in brackets(sweeps, target).items():     # DVFS energy where the readout needs it
        for r in (b[:2] if b else ()):
            if "energy_j" not in r:
                traces = traces_from_paths(sims[way][1](te)(r["setting"]), points, n_blocks)
                sched = "predictive" if way.startswith("predictive") else "early_exit"
                dv = [pm.simulate(t, sched, deadline) for t in traces]
                r["energy_j"] = sum(d.energy_j for d in dv) / len(dv)
                r["deadline_met_pct"] = 100.0 * sum(d.met_deadline for d in dv) / len(dv)
    ct = Trace(len(points), n_blocks - 1)              # the classic network: every block, the final head
    classic = {"macs_per_sample": costs.cost(ct)["macs"], "energy_ops_j": costs.ops_energy_j(ct),
               "energy_j": pm.simulate(ct, "classic", deadline).energy_j, "latency_ms_trimmed": None}
    eq = readout(sweeps, classic, target)
    curve = macs_curve(sweeps, classic_top1)
    first = next(k for k, b_ in enumerate(points) if b_ >= L0)
    up = up_to(costs, pm, deadline, points, first, te, yt, classic, sweeps)
    up["predictive_vs_early_exit_best"] = best_vs_early_exit(curve)
    return {"model": name, "width": size["width"], "epochs": [size["epochs"], size["joint"]], "exits": len(points),
            "backbone_top1": backbone_top1, "classic_top1": classic_top1, "classic_macs": classic["macs_per_sample"],
            "thresholds_T": T, "equal_accuracy": eq, "macs_curve": curve, "up_to": up,
            "seconds_training": round(t_train, 1), "seconds": round(time.perf_counter() - t0, 1)}


def side_by_side(r: dict) -> list[str]:
    eq, up = r["equal_accuracy"], r["up_to"]
    g = lambda d, k: None if d is None else d.get(k)
    f = lambda v: "n/a" if v is None else f"{v:.1f}%"
    first = up.get("first_exit") or {}
    best = up.get("predictive_vs_early_exit_best") or {}
    lines = [f"### {r['model']} (classic top-1 {r['classic_top1']:.2f}%, {r['exits']} exits, L0 = {L0})", "",
             f"At equal test top-1 {eq['target_top1']:.2f}%; early-exit reference: {eq['early_exit_reference']}.", "",
             "| figure | paper (\"up to\") | ours, max\\|logit\\| engine, equal accuracy | ours, max softmax engine, "
             "equal accuracy | ours, up to (ceiling) |", "|---|---|---|---|---|"]
    up_vals = {"computation_reduction_vs_classic": first.get("computation_reduction_vs_classic"),
               "energy_saving_vs_classic": first.get("energy_saving_vs_classic"),
               "computation_reduction_vs_early_exit": best.get("computation_reduction"),
               "energy_saving_vs_early_exit": None}
    for key, paper in PAPER.items():
        metric = "computation_reduction" if key.startswith("computation") else "energy_saving"
        ref = "classic" if key.endswith("classic") else "early_exit"
        lines.append(f"| {key} | {paper}% | {f(g(eq.get(f'predictive_vs_{ref}'), metric))} "
                     f"| {f(g(eq.get(f'predictive_softmax_vs_{ref}'), metric))} | {f(up_vals[key])} |")
    lines += ["", f"Up to: every input at the first exit checked: top-1 {first.get('top1', float('nan')):.2f}%."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--models", default="vgg19,resnet34")
    a = ap.parse_args()
    t0 = time.perf_counter()
    device = torch.device("cpu" if a.smoke else a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data = load(a.smoke)
    if a.smoke:
        data = [(x[:n], y[:n]) for (x, y), n in zip(data, (96, 48, 48))]
    sizes = SMOKE if a.smoke else FULL
    results = [study(m, sizes[m], data, device) for m in a.models.split(",")]
    res = {"smoke": a.smoke, "device": str(device), "ran_on_gpu": device.type == "cuda",
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "torch": torch.__version__,
           "paper": PAPER, "results": results, "seconds": round(time.perf_counter() - t0, 1),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "predictive_exit_paper.json").write_text(json.dumps(res, indent=1))
    md = [f"# Predictive Exit at paper scale{' (SMOKE: toy size on the CPU, not figures)' if a.smoke else ''}", "",
          f"{res['date']}, device {res['device']} {res['gpu'] or ''}, torch {res['torch']}, {res['seconds']} s.", ""]
    for r in results:
        md += side_by_side(r) + [""]
    (a.out / "predictive_exit_paper.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
