"""`chaincomp exit`: train a backbone and fine-grained exits, then compare classic inference, early
exit (confidence, entropy, max|logit|) and Predictive Exit on computation, energy and latency.

Every way is calibrated on validation data to stay within ``max_drop`` points of the classic
network and measured on test data: accuracy, MACs and modelled energy from the exact batched
simulation of each input's path, wall latency from the batch-1 runtime that really skips work
(its decisions are checked against the simulation). Recipe (all keys optional, unknown keys refused):

    name: exit_default
    seed: 0
    data: {name: digits}                      # chaincomp.recipe.DataConfig
    model: {name: digits_vgg, width: 1.0}     # chaincomp.recipe.ModelConfig
    baseline: {epochs: 40, lr: 0.05, batch_size: 64}
    exits: {head: bof, codewords: 16, train: frozen, epochs: 10, lr: 0.01, optimizer: adam}
    predictive: {beta: null, rounds: 8, start_block: 1, give_up: jump, max_drop: 0.5, sweep_points: 40}
    energy: {platform: jetson_tx2_cpu, latency_ms: null, slack: 1.1, controller: auto, policy: guarded}
    runtime: {limit: null, warmup: 10, threads: 1}

``model.weights`` may name the ``exit_model.safetensors`` of an earlier run: nothing is trained and
the ways are measured again (another platform, limit or beta). Definitions: docs/predictive_exit.md.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from . import progress
from .errors import UserError
from .recipe import (BaselineConfig, DataConfig, ModelConfig, RecipeName, Seed, Threads, read_yaml_recipe,
                     validate_document)

DEFAULT_RECIPE = "exit_default"


class ExitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head: Literal["bof", "pool"] = "bof"
    codewords: int = Field(64, ge=1, le=4096, description="BoF codebook size (the paper: 64)")
    train: Literal["frozen", "joint"] = Field("frozen", description="frozen: backbone fixed, sum of exit CEs")
    epochs: int = Field(30, ge=0, le=100_000)
    lr: float = Field(0.003, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = "adam"
    weight_decay: float = Field(5e-4, ge=0, le=1)


class PredictiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float | None = Field(None, gt=0, le=1e6, description="null: calibrate on validation data")
    rounds: int = Field(8, ge=1, le=64)
    start_block: int = Field(1, ge=0, le=10_000)
    give_up: Literal["jump", "final"] = "jump"
    max_drop: float = Field(0.5, ge=0, le=100)
    sweep_points: int = Field(40, ge=2, le=1000)


class EnergyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: str = "jetson_tx2_cpu"
    latency_ms: float | None = Field(None, gt=0, le=1e9)
    slack: float = Field(1.1, ge=1.0, le=1000)
    controller: Literal["auto", "cpufreq", "jetson_devfreq", "dry_run"] = "auto"
    policy: Literal["guarded", "predicted"] = Field(
        "guarded", description="predicted: the guide's policy on the predicted remaining work; guarded: "
                               "also keep time to finish the whole network at the top point (see docs)")


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="test inputs run at batch 1 (null: all)")
    warmup: int = Field(10, ge=0, le=10_000)
    threads: int = Field(1, ge=1, le=1024, description="torch threads while timing (batch 1: one is fastest and steadiest)")


class ExitRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: RecipeName = "exit"
    seed: Seed = 0
    threads: Threads = None
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig(name="digits_vgg")
    baseline: BaselineConfig = BaselineConfig(epochs=40, batch_size=64)
    exits: ExitsConfig = ExitsConfig()
    predictive: PredictiveConfig = PredictiveConfig()
    energy: EnergyConfig = EnergyConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def load_exit_recipe(path: str | None) -> ExitRecipe:
    """A recipe file, or a built-in one by name (``exit_default`` when none is given)."""
    obj, _, source = read_yaml_recipe(path, DEFAULT_RECIPE, prefix="exit_")
    return validate_document(ExitRecipe, obj, source)


# ------------------------------------------------------------------------------------ training

class _ExitsOnFrozenBackbone(nn.Module):
    """Trains exit heads on a fixed backbone: blocks run without gradient and stay in eval mode (their
    BN statistics are those of the trained backbone); outputs are the exits only (sum of exit CEs)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.blocks.eval()
        self.net.head.eval()
        return self

    def forward(self, x):
        outs = []
        for i, b in enumerate(self.net.blocks[:-1]):
            with torch.no_grad():
                x = b(x)
            if str(i) in self.net.exits:
                outs.append(self.net.exits[str(i)](x))
        return outs


def train_network(cfg: ExitRecipe, data):
    """Backbone first, then an exit after every block but the last. ``model.weights`` skips what it
    holds: a backbone's weights skip the baseline; an exit network's (``DIR/exit_model.safetensors``
    of an earlier run) skip all training, to re-measure on another platform or latency limit."""
    from .data import model_kwargs
    from .arch import apply_transform
    from .io import load_weights
    from .models import build_model
    from .train import FitConfig, fit

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, width=cfg.model.width, **model_kwargs(data))
    state = load_weights(cfg.model.weights) if cfg.model.weights else None
    whole = state is not None and any(k.startswith("exits.") for k in state)
    options = {"codewords": cfg.exits.codewords} if cfg.exits.head == "bof" else {}
    net = apply_transform(model, {"type": "exits", "points": "all", "head": cfg.exits.head,
                                  "num_classes": data.num_classes, "options": options}, data.sample_input())
    if state is not None:
        try:
            (net if whole else model).load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"model.weights: do not fit {cfg.model.name} with these exits "
                            f"({str(e).strip().splitlines()[0][:120]})") from None
        if whole:
            return net.eval()
    else:
        b = cfg.baseline
        fit(model, data, FitConfig(b.epochs, b.lr, b.batch_size, b.weight_decay, b.optimizer),
            stage="baseline", seed=cfg.seed)
    e = cfg.exits
    fc = FitConfig(e.epochs, e.lr, e.batch_size, e.weight_decay, e.optimizer)
    if e.train == "frozen":
        fit(_ExitsOnFrozenBackbone(net), data, fc, stage="exits (frozen backbone)", seed=cfg.seed + 1,
            params=list(net.exits.parameters()))
    else:
        fit(net, data, fc, stage="exits (joint)", seed=cfg.seed + 1)
    return net.eval()


def outputs(net, split) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every output (exits, final last) for a whole split, and its labels."""
    from .train import outputs_and_targets

    outs, ys = outputs_and_targets(net, split)
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))], torch.cat(ys)


# ------------------------------------------------------------------------------- calibration

def _accuracy(outs, paths, y) -> float:
    pick = torch.stack(outs, 0)[paths.exit, torch.arange(len(y))]
    return float((pick.argmax(-1) == y).double().mean() * 100)


def _sweep(outs, y, make_paths, settings, costs) -> list[dict]:
    rows = []
    for s in settings:
        p = make_paths(s)
        rows.append({"setting": s, "metric": _accuracy(outs, p, y), "macs": float(costs.paths_total(p).mean())})
    return rows


def _choose(rows: list[dict], floor: float) -> dict:
    ok = [r for r in rows if r["metric"] >= floor - 1e-9]
    return min(ok, key=lambda r: (r["macs"], -r["metric"])) if ok else max(rows, key=lambda r: r["metric"])


def beta_grid(val_exits, thresholds, points, start_block: int, n: int) -> list[float]:
    """Betas spanning 'almost every input leaves at its first exit' to 'no exit ever fires'."""
    from .exits.predictive import max_abs_ratio

    r = max_abs_ratio(val_exits, thresholds)[:, [k for k, b in enumerate(points) if b >= start_block]]
    if r.numel() == 0:
        return [1.0]
    lo, hi = max(float(r.quantile(0.02)), 1e-3), float(r.max()) * 1.001
    return sorted({round(float(b), 6) for b in torch.logspace(torch.log10(torch.tensor(lo)),
                                                               torch.log10(torch.tensor(max(hi, lo * 1.01))), n)})


# ------------------------------------------------------------------------------------ the run

def run_exit(cfg: ExitRecipe, out: str | Path, *, beta: float | None = None, latency_ms: float | None = None,
             platform: str | None = None, resume: bool = False) -> dict:
    """Train (or with `resume` reuse the folder's trained network), calibrate, run and measure every way;
    write DIR/exit.json (last) and DIR/exit.md; return the results."""
    from .data import load_data
    from .energy.controllers import make_controller
    from .energy.meters import detect_meter
    from .energy.profiles import load_profile
    from .exits import predictive as pe
    from .exits.calibrate import GRID
    from .exits.runtime import (CostTable, ExitRuntime, Governor, PlatformModel, run_interleaved, run_split,
                                 traces_from_paths)
    from .io import locked, write_json

    if beta is not None and not beta > 0:
        raise UserError(f"--beta: must be > 0 (got {beta})")
    if latency_ms is not None and not latency_ms > 0:
        raise UserError(f"--latency-ms: must be > 0 (got {latency_ms})")
    t_start = time.perf_counter()
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        print(f"chaincomp: warning: {msg}", file=sys.stderr)

    out = Path(out)
    profile = load_profile(platform or cfg.energy.platform)          # bad profiles fail before training
    with locked(out):                   # before loading data: a second writer is refused at once
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        data = load_data(cfg.data, seed=cfg.seed)
        if data.task != "classification":
            raise UserError(f"data.name: exits need a classification dataset, not {data.name}")
        _preflight(cfg, data, profile)
        timings: dict[str, float] = {}
        clock = [time.perf_counter()]

        def phase(name: str) -> None:
            now = time.perf_counter()
            timings[name] = round(now - clock[0], 2)
            clock[0] = now
            progress.log(f"{name}: {timings[name]:.1f} s")

        net = _trained_network(cfg, data, out, resume)
        phase("training")
        n_blocks = len(net.blocks)
        p = cfg.predictive
        points = net.exit_points
        e = len(points)
        costs = CostTable(net, data.sample_input())
        pm = PlatformModel(costs, profile, guarded=cfg.energy.policy == "guarded")
        top = profile.top()
        classic_s = pm.classic_cycles / top.freq_hz
        lat_ms = latency_ms or cfg.energy.latency_ms
        deadline = lat_ms / 1e3 if lat_ms else cfg.energy.slack * classic_s
        if classic_s > deadline * (1 + 1e-9):
            warn(f"latency limit {deadline * 1e3:.4g} ms cannot be met by the classic network even at the top "
                 f"point ({top.freq_mhz} MHz needs {classic_s * 1e3:.4g} ms on {profile.name}, modelled); "
                 "inputs that cannot meet it run at the top point")

        with progress.task("outputs of train/val/test", 3) as bar:
            tr, _ = outputs(net, data.train); bar.advance(1)
            va, yv = outputs(net, data.val); bar.advance(1)
            te, yt = outputs(net, data.test); bar.advance(1)
        T = pe.exit_thresholds(tr[:-1])
        phase("outputs")
        rule_of = lambda b: pe.PredictiveRule(tuple(points), tuple(T), b, p.rounds, p.start_block, p.give_up)
        classic_val = float((va[-1].argmax(-1) == yv).double().mean() * 100)
        floor = classic_val - p.max_drop

        # sweeps on validation (choice) and test (plots); every way gets the same accuracy floor
        betas = beta_grid(va[:-1], T, points, p.start_block, p.sweep_points)
        sims = {
            "predictive": (betas, lambda o: (lambda b: pe.simulate_predictive(o[:-1], rule_of(b)))),
            "maxlogit": (betas, lambda o: (lambda b: pe.simulate_early_exit(
                pe.fires_rule(o[:-1], points, "maxlogit", [b * t for t in T], p.start_block), points, p.start_block))),
            "confidence": (GRID["confidence"], lambda o: (lambda t: pe.simulate_early_exit(
                pe.fires_rule(o[:-1], points, "confidence", t, p.start_block), points, p.start_block))),
            "entropy": (GRID["entropy"], lambda o: (lambda t: pe.simulate_early_exit(
                pe.fires_rule(o[:-1], points, "entropy", t, p.start_block), points, p.start_block))),
        }
        sweeps, chosen = {}, {}
        with progress.task("beta / threshold sweeps", 2 * sum(len(s) for s, _ in sims.values())) as bar:
            for way, (settings, maker) in sims.items():
                sv = _sweep(va, yv, maker(va), settings, costs); bar.advance(len(settings))
                st = _sweep(te, yt, maker(te), settings, costs); bar.advance(len(settings))
                sweeps[way] = [{"setting": a["setting"], "val_metric": a["metric"], "val_macs": a["macs"],
                                "test_metric": b["metric"], "test_macs": b["macs"]} for a, b in zip(sv, st)]
                chosen[way] = _choose(sv, floor)["setting"]
        phase("sweeps")
        for way in ("predictive", "maxlogit"):
            if beta is not None or p.beta is not None:
                chosen[way] = beta if beta is not None else p.beta
        rule = rule_of(chosen["predictive"])

        # the batch-1 runtime, every way, with DVFS applied through the controller (dry run without one)
        rt = ExitRuntime(net)
        n_rt = min(len(data.test), cfg.runtime.limit or len(data.test))
        xt = data.test.x[:n_rt]
        meter = detect_meter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctl = make_controller(cfg.energy.controller, available_mhz=[q.freq_mhz for q in profile.points()])
        for w in caught:
            warn(str(w.message))
        gov = Governor(pm, deadline, ctl)
        at_top = [False]

        def top_point(fn):      # classic and early exit run at the top point
            def run(x):
                if not at_top[0]:
                    ctl.set_point(top)
                    at_top[0] = True
                return fn(x)
            return run

        def predictive(x):
            at_top[0] = False
            return rt.predictive(x, rule, gov)

        runners = {
            "classic": top_point(rt.classic),
            "confidence": top_point(lambda x: rt.early_exit(x, "confidence", chosen["confidence"], p.start_block)),
            "entropy": top_point(lambda x: rt.early_exit(x, "entropy", chosen["entropy"], p.start_block)),
            "maxlogit": top_point(lambda x: rt.early_exit(x, "maxlogit", [chosen["maxlogit"] * t for t in T],
                                                          p.start_block)),
            "predictive": predictive,
        }
        final_paths = {"classic": pe.simulate_classic(len(yt), e)}
        for way in ("predictive", "maxlogit", "confidence", "entropy"):
            final_paths[way] = sims[way][1](te)(chosen[way])
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.runtime.threads)
        measured: dict[str, float] = {}
        try:
            with progress.task(f"batch-1 runtime ({n_rt} inputs x {len(runners)} ways)", n_rt * len(runners)) as bar:
                ran = run_interleaved(runners, xt, warmup=cfg.runtime.warmup, bar=bar)
            if meter is not None:   # energy needs one window per way: a second, way-by-way pass
                for way, fn in runners.items():
                    with meter.window() as w:
                        run_split(fn, xt, warmup=0)
                    measured[way] = w.reading.joules / n_rt
        finally:
            torch.set_num_threads(threads)
            ctl.close()
        results = {way: _summarise(way, ran[way][1], ran[way][0], yt[:n_rt], final_paths[way], outs=te, y=yt,
                                   costs=costs, pm=pm, deadline=deadline, points=points, n_blocks=n_blocks,
                                   measured=measured.get(way), meter=meter) for way in runners}
        other = PlatformModel(costs, profile, guarded=not pm.guarded)    # the other policy, for comparison
        sims_other = [other.simulate(t, "predictive", deadline)
                      for t in traces_from_paths(final_paths["predictive"], points, n_blocks)]
        results["predictive"]["policy"] = cfg.energy.policy
        results["predictive"]["other_policy"] = {
            "policy": "predicted" if pm.guarded else "guarded",
            "energy_j": sum(d.energy_j for d in sims_other) / len(sims_other), "energy_kind": "modelled",
            "deadline_met_pct": 100.0 * sum(d.met_deadline for d in sims_other) / len(sims_other),
            "modelled_latency_ms": 1e3 * sum(d.latency_s for d in sims_other) / len(sims_other)}
        phase("runtime and energy")
        acc = pe.prediction_accuracy(te[:-1], rule, final_paths["predictive"])
        results["predictive"].update(acc)
        results["predictive"]["controller"] = {"kind": ctl.kind, "dry_run": bool(ctl.dry),
                                               "set_point_calls": len(ctl.history),
                                               "mhz_histogram": _hist(gov.chosen)}
        val_macs = {w: float(costs.paths_total(sims[w][1](va)(chosen[w])).mean())
                    for w in ("maxlogit", "confidence", "entropy")}
        res = _assemble(cfg, data, points, n_blocks, T, chosen, results, sweeps, classic_val, val_macs, deadline,
                        profile, meter, notes, beta, lat_ms, time.perf_counter() - t_start)
        res["timings_s"] = timings
        res["criteria_auroc"] = criteria_auroc(te[:-1], yt, points)
        write_report(out, res)
        write_json(out / "exit.json", res)      # last: exit.json says every file of the run is complete
    return res


def train_digest(cfg: ExitRecipe) -> str:
    """Identity of the training settings: the trained network depends on these and nothing else."""
    import hashlib
    import json

    part = cfg.model_dump(mode="json", include={"seed", "data", "model", "baseline", "exits"})
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def _trained_network(cfg: ExitRecipe, data, out: Path, resume: bool):
    """Train, or with --resume reuse DIR/exit_model.safetensors when it was trained with the same
    settings: training is most of the run, and everything after it is recomputed from the network,
    so a resumed run ends with the uninterrupted run's figures (wall latencies aside).

    Without --resume the folder's earlier results are dropped first (exit.json before anything else),
    so a run killed midway never leaves a new network beside an old exit.json."""
    from .io import save_weights, weights_metadata

    path, digest = out / "exit_model.safetensors", train_digest(cfg)
    reuse = resume and path.exists()
    if reuse and weights_metadata(path).get("train_digest") != digest:
        raise UserError(f"{path}: was trained with other settings (seed, data, model, baseline or exits); "
                        "drop --resume to train again, or use another --out")
    (out / "exit.json").unlink(missing_ok=True)
    if reuse:
        with_weights = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": str(path)})})
        progress.log(f"network: reused from {path}")
        return train_network(with_weights, data)
    net = train_network(cfg, data)
    save_weights(path, net.state_dict(), metadata={"train_digest": digest})
    return net


def _preflight(cfg: ExitRecipe, data, profile) -> None:
    """Mistakes that depend on the model or the profile fail here, before minutes of training."""
    from .data import model_kwargs
    from .models import build_model

    n_blocks = len(build_model(cfg.model.name, width=cfg.model.width, **model_kwargs(data)).blocks)
    if cfg.predictive.start_block >= n_blocks - 1:
        raise UserError(f"predictive.start_block: {cfg.predictive.start_block} leaves no exit; the last exit is "
                        f"after block {n_blocks - 2} of {cfg.model.name}")
    profile.cycles({(32, 32): 1.0})      # the FP32 throughput the cost model needs (UserError if absent)


def _hist(values) -> dict[str, int]:
    h: dict[str, int] = {}
    for v in values:
        h[f"{v:g}"] = h.get(f"{v:g}", 0) + 1
    return h


def _summarise(way, traces, preds, y_rt, paths, *, outs, y, costs, pm, deadline, points, n_blocks, measured,
               meter) -> dict:
    """One way's figures: test-set accuracy, MACs and modelled energy from the exact simulation of every
    input's path; wall latency (and measured energy) from the batch-1 runtime over its inputs."""
    from .exits.runtime import traces_from_paths

    sim_traces = traces_from_paths(paths, points, n_blocks)
    schedule = way if way in ("classic", "predictive") else "early_exit"
    dv = [pm.simulate(t, schedule, deadline) for t in sim_traces]
    lat = torch.tensor([t.latency_s for t in traces], dtype=torch.float64) * 1e3
    agree = [(a.exit, a.heads, a.predictions) == (b.exit, b.heads, b.predictions)
             for a, b in zip(traces, sim_traces)]
    hist = torch.bincount(paths.exit, minlength=len(points) + 1).tolist()
    r = {
        "metric": _accuracy(outs, paths, y),
        "macs_per_sample": float(costs.paths_total(paths, "macs").mean()),
        "bitops_per_sample": float(costs.paths_total(paths, "bitops").mean()),
        "energy_j": sum(d.energy_j for d in dv) / len(dv),
        "energy_kind": "modelled",
        "energy_busy_j": sum(d.busy_energy_j for d in dv) / len(dv),
        "energy_ops_j": float(costs.paths_total(paths, "ops_j").mean()),
        "energy_ops_kind": "modelled",
        "latency_ms": float(lat.median()),          # median: robust to the scheduler's stalls
        "latency_ms_mean": float(lat.mean()),
        "latency_kind": "measured (median wall time per input, batch 1)",
        "modelled_latency_ms": 1e3 * sum(d.latency_s for d in dv) / len(dv),
        "deadline_met_pct": 100.0 * sum(d.met_deadline for d in dv) / len(dv),
        "heads_per_sample": float(paths.heads.sum(1).double().mean()),
        "exit_histogram": {("final" if k == len(points) else f"block {points[k]}"): c for k, c in enumerate(hist)},
        "runtime": {"n": len(traces), "metric": float((preds == y_rt).double().mean() * 100),
                    "macs_per_sample": sum(costs.cost(t)["macs"] for t in traces) / len(traces),
                    "agreement_with_simulation_pct": 100.0 * sum(agree) / len(agree)},
    }
    if measured is not None:
        r["measured_energy_j"], r["measured_energy_kind"], r["meter"] = measured, "measured", meter.source
    return r


def criteria_auroc(exit_outs: list[torch.Tensor], y: torch.Tensor, points: list[int]) -> dict:
    """How well each exit criterion tells right answers from wrong ones, exit by exit (test split)."""
    from .exits.rules import separability

    per_exit = separability(exit_outs, y)
    known = {c: [v for v in row if v is not None] for c, row in per_exit.items()}
    mean = {c: sum(vs) / len(vs) if vs else 0.0 for c, vs in known.items()}
    return {"split": "test", "exit_blocks": list(points), "per_exit": per_exit, "mean": mean,
            "definition": "AUROC of the criterion's score for 'the exit's answer is right' "
                          "(0.5 = chance, 1 = perfect ranking); the ceiling on what a threshold on it can save"}


def auroc_lines(res: dict) -> list[str]:
    """A markdown table of criteria_auroc (exit.md, and the benchmark record)."""
    ca = res.get("criteria_auroc")
    if not ca:
        return []
    names = {w: label.removeprefix("early exit: ").replace("|", "\\|") for w, label in WAYS}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    lines = ["| criterion | mean AUROC | per exit (block " + ", ".join(map(str, ca["exit_blocks"])) + ") |",
             "|---|---|---|"]
    for c, row in ca["per_exit"].items():
        lines.append(f"| {names.get(c, c)} | {ca['mean'][c]:.3f} | {' '.join(fmt(v) for v in row)} |")
    return lines


def _pct(new: float, ref: float) -> float:
    return 100.0 * (1.0 - new / ref) if ref else 0.0


def _assemble(cfg, data, points, n_blocks, T, chosen, results, sweeps, classic_val, val_macs, deadline, profile,
              meter, notes, beta, lat_ms, seconds) -> dict:
    from .report import machine_info

    strategies = {w: {**results[w], "threshold" if w != "maxlogit" else "beta": chosen[w], "val_macs": val_macs[w]}
                  for w in ("confidence", "entropy", "maxlogit")}
    best = min(strategies, key=lambda w: strategies[w]["val_macs"])
    pred, cl, ee = results["predictive"], results["classic"], strategies[best]
    p = cfg.predictive
    bound = classic_val - p.max_drop
    res = {
        "recipe": cfg.model_dump(mode="json"), "dataset": data.name, "model": cfg.model.name, "metric_name": "top1",
        "n_test": len(data.test), "n_val": len(data.val), "n_blocks": n_blocks, "exit_points": points,
        "thresholds_T": T, "threshold_definition": "T_k = mean over training inputs and classes of |logit| of exit k",
        "beta": chosen["predictive"],
        "beta_source": "given" if (beta is not None or p.beta is not None) else
                       f"calibrated on validation: least MACs with top-1 >= classic - {p.max_drop}",
        "rounds": p.rounds, "start_block": p.start_block, "give_up": p.give_up, "max_drop": p.max_drop,
        "classic_val_metric": classic_val, "val_floor": bound,
        "platform": profile.name, "platform_points_mhz": [q.freq_mhz for q in profile.points()],
        "latency_limit_ms": deadline * 1e3,
        "latency_limit_source": "given" if lat_ms else f"{cfg.energy.slack} x classic latency at the top point (modelled)",
        "energy_kind": "modelled", "measured_energy": meter.source if meter is not None else None,
        "classic": cl,
        "early_exit": {**ee, "strategy": best, "strategies": strategies},
        "predictive": pred,
        "computation_reduction_vs_classic": _pct(pred["macs_per_sample"], cl["macs_per_sample"]),
        "computation_reduction_vs_early_exit": _pct(pred["macs_per_sample"], ee["macs_per_sample"]),
        "energy_saving_vs_classic": _pct(pred["energy_j"], cl["energy_j"]),
        "energy_saving_vs_early_exit": _pct(pred["energy_j"], ee["energy_j"]),
        "vs_each_strategy": {w: {"computation_reduction": _pct(pred["macs_per_sample"], s["macs_per_sample"]),
                                 "energy_saving": _pct(pred["energy_j"], s["energy_j"]),
                                 "ops_energy_saving": _pct(pred["energy_ops_j"], s["energy_ops_j"])}
                             for w, s in strategies.items()},
        "ops_energy_saving_vs_classic": _pct(pred["energy_ops_j"], cl["energy_ops_j"]),
        "test_within_max_drop": {w: results[w]["metric"] >= cl["metric"] - p.max_drop
                                 for w in ("predictive", "confidence", "entropy", "maxlogit")},
        "sweep": sweeps, "warnings": notes,
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
    }
    return res


# -------------------------------------------------------------------------------------- report

WAYS = [("classic", "classic"), ("confidence", "early exit: max softmax"), ("entropy", "early exit: entropy"),
        ("maxlogit", "early exit: max|logit|"), ("predictive", "predictive exit")]


def ways_of(res: dict) -> dict[str, dict]:
    """exit.json's result of each way of running, by the keys of WAYS."""
    return {"classic": res["classic"], **res["early_exit"]["strategies"], "predictive": res["predictive"]}


def ways_table(res: dict) -> list[str]:
    """The markdown table of the ways of running (exit.md, and the benchmark record)."""
    ways = ways_of(res)
    lines = ["| way | top-1 | MACs | heads/input | energy (DVFS, modelled) | energy (ops, modelled) "
             "| latency (measured) | limit met |", "|---|---|---|---|---|---|---|---|"]
    for w, name in WAYS:
        r = ways[w]
        cell = name.replace("|", "\\|")  # "max|logit|" would split the markdown cell
        lines.append(f"| {cell} | {r['metric']:.2f} | {r['macs_per_sample'] / 1e6:.3f} M | {r['heads_per_sample']:.2f} "
                     f"| {r['energy_j'] * 1e3:.4g} mJ | {r['energy_ops_j'] * 1e6:.4g} uJ | {r['latency_ms']:.3f} ms "
                     f"| {r['deadline_met_pct']:.1f}% |")
    return lines


def write_report(out: Path, res: dict) -> None:
    """exit.md with two plots: where inputs leave, and accuracy against computation over the sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write_text
    from .report import save_figure

    ways = ways_of(res)
    labels = list(res["classic"]["exit_histogram"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(WAYS)
    for i, (w, name) in enumerate(WAYS):
        h = ways[w]["exit_histogram"]
        ax.bar([x + i * width for x in range(len(labels))], [h[k] for k in labels], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=45, ha="right")
    ax.set_ylabel("test inputs")
    ax.set_title(f"exit layer distribution ({res['model']} on {res['dataset']})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "exit_layers.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for w, name in WAYS[1:]:
        rows = sorted(res["sweep"][w], key=lambda r: r["test_macs"])
        ax.plot([r["test_macs"] / 1e6 for r in rows], [r["test_metric"] for r in rows], ".-", label=name)
        ax.plot([ways[w]["macs_per_sample"] / 1e6], [ways[w]["metric"]], "k*", ms=9)
    ax.plot([res["classic"]["macs_per_sample"] / 1e6], [res["classic"]["metric"]], "rs", label="classic")
    ax.set_xlabel("MACs per input (M)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs computation (sweep of beta / thresholds; * = chosen)")
    ax.legend(fontsize=7)
    save_figure(fig, out / "tradeoff.png")

    lines = [f"# Predictive Exit: {res['model']} on {res['dataset']}", "",
             f"{res['date']}, {res['machine']['processor']} ({res['machine']['cpus']} CPUs), torch "
             f"{res['machine']['torch']}; {res['n_test']} test inputs. Definitions: docs/predictive_exit.md.", "",
             f"beta = {res['beta']:.4g} ({res['beta_source']}); R = {res['rounds']}, L0 = block "
             f"{res['start_block']}, give-up: {res['give_up']}. Latency limit {res['latency_limit_ms']:.4g} ms "
             f"({res['latency_limit_source']}) on platform `{res['platform']}`.", "", *ways_table(res)]
    op = res["predictive"]["other_policy"]
    lines += ["", f"DVFS policy `{res['predictive']['policy']}`; with `{op['policy']}` instead: predictive energy "
              f"{op['energy_j'] * 1e3:.4g} mJ (modelled), limit met {op['deadline_met_pct']:.1f}%."]
    pa = res["predictive"].get("prediction_accuracy")
    lines += ["", f"Predictive exit against the classic network: computation reduction "
              f"{res['computation_reduction_vs_classic']:.1f}%, energy saving {res['energy_saving_vs_classic']:.1f}% "
              f"(modelled). Against early exit ({res['early_exit']['strategy']}, the cheapest strategy on validation): "
              f"computation reduction {res['computation_reduction_vs_early_exit']:.1f}%, energy saving "
              f"{res['energy_saving_vs_early_exit']:.1f}% (modelled). Negative: predictive exit costs more.", "",
              f"Prediction accuracy (first prediction of each input): "
              f"{'n/a' if pa is None else f'{pa:.1f}%'} over {res['predictive']['n_first_predictions']} inputs; "
              f"over all predictions: {res['predictive']['prediction_accuracy_all'] or 0:.1f}%.", "",
              "How well each criterion ranks an exit's right answers above its wrong ones (AUROC on the test "
              "set; 0.5 = chance): the ceiling on what a threshold on it can save at equal accuracy.", "",
              *auroc_lines(res), "",
              "![exit layers](exit_layers.png)", "", "![tradeoff](tradeoff.png)", ""]
    if res["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in res["warnings"]] + [""]
    atomic_write_text(out / "exit.md", "\n".join(lines))


# ----------------------------------------------------------------------------------------- cli

def _cmd_exit(args: argparse.Namespace) -> int:
    cfg = load_exit_recipe(args.recipe)
    out = Path(args.out or f"runs/{cfg.name}")
    res = run_exit(cfg, out, beta=args.beta, latency_ms=args.latency_ms, platform=args.platform, resume=args.resume)
    from rich.table import Table

    t = Table(title=f"{res['model']} on {res['dataset']}: beta {res['beta']:.4g}, platform {res['platform']}")
    for h in ("way", "top-1", "MACs (M)", "energy mJ (modelled)", "latency ms (measured)"):
        t.add_column(h, justify="left" if h == "way" else "right")
    ways = ways_of(res)
    for w, name in WAYS:
        r = ways[w]
        t.add_row(name, f"{r['metric']:.2f}", f"{r['macs_per_sample'] / 1e6:.3f}", f"{r['energy_j'] * 1e3:.4g}",
                  f"{r['latency_ms']:.3f}")
    progress.console.print(t)
    pa = res["predictive"]["prediction_accuracy"]
    progress.console.print(
        f"predictive exit, computation reduction / energy saving (modelled): vs classic "
        f"{res['computation_reduction_vs_classic']:.1f}% / {res['energy_saving_vs_classic']:.1f}%, vs early exit "
        f"({res['early_exit']['strategy']}) {res['computation_reduction_vs_early_exit']:.1f}% / "
        f"{res['energy_saving_vs_early_exit']:.1f}%; prediction accuracy {'n/a' if pa is None else f'{pa:.1f}%'}")
    print(f"results: {out / 'exit.json'}  report: {out / 'exit.md'}")
    return 0


def register_cli(sub) -> None:
    r = sub.add_parser("exit", help="Predictive Exit against early exit and the classic network (digits by default)")
    r.add_argument("recipe", nargs="?", help=f"exit recipe YAML or built-in name (default: {DEFAULT_RECIPE})")
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true",
                   help="reuse the network a killed (or earlier) run in --out trained with the same settings; "
                        "without it the run starts from scratch")
    r.add_argument("--latency-ms", type=float, help="latency limit per inference on the platform (modelled ms)")
    r.add_argument("--platform", help="platform profile: built-in name or YAML file (default: the recipe's)")
    r.add_argument("--beta", type=float, help="exit rule beta for predictive and max|logit| exit (skips calibration)")
    r.set_defaults(func=_cmd_exit)
