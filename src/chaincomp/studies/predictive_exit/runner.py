"""The Predictive Exit study run, in phases that share one `Study` record: train (or reuse) the network,
compute every exit's outputs, sweep each way's setting on validation data, run the batch-1 runtime
with DVFS, and assemble exit.json. Each phase reads what earlier ones put in the record."""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ... import progress
from ...data.base import TaskData
from ...device import describe
from ...energy.profiles import Profile
from ...errors import UserError
from ...exits import predictive as pe
from ...exits.runtime import CostTable, PlatformModel
from .figures import accuracy as _accuracy, hist as _hist, summarise as _summarise
from .compare import best_vs_early_exit, macs_curve, measure_equal_accuracy, up_to
from .network import outputs, preflight, trained_network
from .report import criteria_auroc, write_report
from .schema import ExitRecipe


@dataclass
class Study:
    """What the phases share. Filled in order: setup, outputs, sweeps, runtime."""

    cfg: ExitRecipe
    out: Path
    data: TaskData
    profile: Profile
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)
    # setup
    net: object = None
    costs: CostTable | None = None
    pm: PlatformModel | None = None
    deadline: float = 0.0
    # outputs (lists of per-exit logits, final last) and the thresholds T_k
    va: list = None
    yv: torch.Tensor = None
    te: list = None
    yt: torch.Tensor = None
    T: list[float] = None
    classic_val: float = 0.0
    # sweeps
    sims: dict = None
    sweeps: dict = None
    chosen: dict = None
    # runtime
    results: dict = None
    meter: object = None
    equal: dict = None

    @property
    def points(self) -> list[int]:
        return self.net.exit_points

    def warn(self, msg: str) -> None:
        self.notes.append(msg)
        print(f"chaincomp: warning: {msg}", file=sys.stderr)

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.clock, 2)
        self.clock = now
        progress.log(f"{name}: {self.timings[name]:.1f} s")

    def rule(self, beta: float, criterion: str = "maxlogit") -> pe.PredictiveRule:
        p = self.cfg.predictive
        return pe.PredictiveRule(tuple(self.points), tuple(self.T), beta, p.rounds, p.start_block, p.give_up,
                                 criterion)


def _sweep(outs, y, make_paths, settings, costs) -> list[dict]:
    rows = []
    for s in settings:
        p = make_paths(s)
        rows.append({"setting": s, "metric": _accuracy(outs, p, y), "macs": float(costs.paths_total(p).mean()),
                     "ops_j": float(costs.paths_total(p, "ops_j").mean())})
    return rows


def _choose(rows: list[dict], floor: float) -> dict:
    ok = [r for r in rows if r["metric"] >= floor - 1e-9]
    return min(ok, key=lambda r: (r["macs"], -r["metric"])) if ok else max(rows, key=lambda r: r["metric"])


def beta_grid(val_exits, thresholds, points, start_block: int, n: int) -> list[float]:
    """Betas spanning 'almost every input leaves at its first exit' to 'no exit ever fires'."""
    from ...exits.predictive import max_abs_ratio

    r = max_abs_ratio(val_exits, thresholds)[:, [k for k, b in enumerate(points) if b >= start_block]]
    if r.numel() == 0:
        return [1.0]
    lo, hi = max(float(r.quantile(0.02)), 1e-3), float(r.max()) * 1.001
    return sorted({round(float(b), 6) for b in torch.logspace(torch.log10(torch.tensor(lo)),
                                                               torch.log10(torch.tensor(max(hi, lo * 1.01))), n)})


def run_exit(cfg: ExitRecipe, out: str | Path, *, resume: bool = False) -> dict:
    """Train (or with `resume` reuse the folder's trained network), calibrate, run and measure every way;
    write DIR/exit.json (last) and DIR/exit.md; return the results. Command-line overrides are merged
    into `cfg` before this (`schema.with_overrides`)."""
    from ...data import load_data
    from ...energy.profiles import load_profile
    from ...io import RunLock, write_json

    t_start = time.perf_counter()
    out = Path(out)
    profile = load_profile(cfg.energy.platform)          # bad profiles fail before training
    with RunLock(out):                  # before loading data: a second writer is refused at once
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        from ...chain import placed
        data = placed(load_data(cfg.data, seed=cfg.seed), cfg)
        if data.task != "classification":
            raise UserError(f"data.name: exits need a classification dataset, not {data.name}")
        preflight(cfg, data, profile)
        s = Study(cfg, out, data, profile)
        _setup(s, resume)
        _outputs(s)
        _sweeps(s)
        _runtime(s)
        s.equal = measure_equal_accuracy(s)
        s.phase("equal accuracy")
        res = assemble(s, time.perf_counter() - t_start)
        write_report(out, res)
        write_json(out / "exit.json", res, finite=True)   # last: says every file of the run is complete
    return res


def _setup(s: Study, resume: bool) -> None:
    """The trained network, its cost table, the platform model and the latency limit."""
    cfg = s.cfg
    s.net = trained_network(cfg, s.data, s.out, resume)
    s.phase("training")
    s.costs = CostTable(s.net, s.data.sample_input())
    s.pm = PlatformModel(s.costs, s.profile, guarded=cfg.energy.policy == "guarded")
    top = s.profile.top()
    classic_s = s.pm.classic_cycles / top.freq_hz
    lat_ms = cfg.energy.latency_ms
    s.deadline = lat_ms / 1e3 if lat_ms else cfg.energy.slack * classic_s
    if classic_s > s.deadline * (1 + 1e-9):
        s.warn(f"latency limit {s.deadline * 1e3:.4g} ms cannot be met by the classic network even at the top "
               f"point ({top.freq_mhz} MHz needs {classic_s * 1e3:.4g} ms on {s.profile.name}, modelled); "
               "inputs that cannot meet it run at the top point")


def _outputs(s: Study) -> None:
    """Every exit's logits on validation (choices) and test (figures), and the thresholds T_k from the
    training split, the authors' way or the project's (`predictive.thresholds`)."""
    from .network import authors_thresholds

    with progress.task("outputs of train/val/test", 3) as bar:
        if s.cfg.threshold_mode == "authors":
            s.T = authors_thresholds(s.net, s.data, s.cfg.exits.batch_size, s.cfg.seed)
        else:
            s.T = pe.exit_thresholds(outputs(s.net, s.data.train)[0][:-1])
        bar.advance(1)
        s.va, s.yv = outputs(s.net, s.data.val); bar.advance(1)
        s.te, s.yt = outputs(s.net, s.data.test); bar.advance(1)
    s.classic_val = float((s.va[-1].argmax(-1) == s.yv).double().mean() * 100)
    s.phase("outputs")


def _simulators(s: Study) -> dict:
    return simulators(s.va[:-1], s.points, s.T, s.cfg.predictive)


def simulators(val_exits, points: list[int], T: list[float], p) -> dict:
    """way -> (settings swept, outputs -> (setting -> simulated paths)). Every way's grid has
    `sweep_points` settings from 'almost every input leaves at its first exit' to 'none leaves'.
    ``p``: a PredictiveConfig (rounds, start_block, give_up, sweep_points)."""
    betas = beta_grid(val_exits, T, points, p.start_block, p.sweep_points)
    n = p.sweep_points
    # the last setting of each grid never fires: the way's curve always reaches the classic network's top-1
    conf = sorted({round(1 - float(v), 8) for v in torch.logspace(-6, torch.log10(torch.tensor(0.9)), n)}) + [2.0]
    ent = sorted({round(float(v), 8) for v in torch.logspace(-6, torch.log10(torch.tensor(2.5)), n)},
                 reverse=True) + [-1.0]

    def rule(v, criterion="maxlogit"):
        return pe.PredictiveRule(tuple(points), tuple(T), v, p.rounds, p.start_block, p.give_up, criterion)

    def early(criterion, scale=None):
        return lambda o: (lambda v: pe.simulate_early_exit(
            pe.fires_rule(o[:-1], points, criterion, [v * t for t in T] if scale else v, p.start_block),
            points, p.start_block))

    return {
        "predictive": (betas, lambda o: (lambda b: pe.simulate_predictive(o[:-1], rule(b)))),
        "predictive_softmax": (conf, lambda o: (lambda t: pe.simulate_predictive(o[:-1], rule(t, "confidence")))),
        "maxlogit": (betas, early("maxlogit", scale=True)),
        "confidence": (conf, early("confidence")),
        "entropy": (ent, early("entropy")),
    }


def _sweeps(s: Study) -> None:
    """Sweeps on validation (the choice) and test (the plots); every way gets the same accuracy floor."""
    p = s.cfg.predictive
    floor = s.classic_val - p.max_drop
    s.sims = _simulators(s)
    s.sweeps, s.chosen = {}, {}
    with progress.task("beta / threshold sweeps", 2 * sum(len(v) for v, _ in s.sims.values())) as bar:
        for way, (settings, maker) in s.sims.items():
            sv = _sweep(s.va, s.yv, maker(s.va), settings, s.costs); bar.advance(len(settings))
            st = _sweep(s.te, s.yt, maker(s.te), settings, s.costs); bar.advance(len(settings))
            s.sweeps[way] = [{"setting": a["setting"], "val_metric": a["metric"], "val_macs": a["macs"],
                              "test_metric": b["metric"], "test_macs": b["macs"], "test_ops_j": b["ops_j"]}
                             for a, b in zip(sv, st)]
            s.chosen[way] = _choose(sv, floor)["setting"]
    s.phase("sweeps")
    if p.beta is not None:
        s.chosen["predictive"] = s.chosen["maxlogit"] = p.beta


def _runtime(s: Study) -> None:
    """The batch-1 runtime, every way, with DVFS applied through the controller (dry run without one)."""
    from ...energy.controllers import make_controller
    from ...energy.meters import detect_meter
    from ...exits.runtime import ExitRuntime, Governor, run_interleaved, run_split, traces_from_paths

    cfg, p, chosen, T = s.cfg, s.cfg.predictive, s.chosen, s.T
    rule = s.rule(chosen["predictive"])
    rule_sm = s.rule(chosen["predictive_softmax"], "confidence")
    rt = ExitRuntime(s.net)
    n_rt = min(len(s.data.test), cfg.runtime.limit or len(s.data.test))
    xt = s.data.test.x[:n_rt]
    meter = detect_meter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctl = make_controller(cfg.energy.controller, available_mhz=[q.freq_mhz for q in s.profile.points()])
    for w in caught:
        s.warn(str(w.message))
    gov, gov_sm = Governor(s.pm, s.deadline, ctl), Governor(s.pm, s.deadline, ctl)
    top, at_top = s.profile.top(), [False]

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

    def predictive_softmax(x):
        at_top[0] = False
        return rt.predictive(x, rule_sm, gov_sm)

    runners = {
        "classic": top_point(rt.classic),
        "confidence": top_point(lambda x: rt.early_exit(x, "confidence", chosen["confidence"], p.start_block)),
        "entropy": top_point(lambda x: rt.early_exit(x, "entropy", chosen["entropy"], p.start_block)),
        "maxlogit": top_point(lambda x: rt.early_exit(x, "maxlogit", [chosen["maxlogit"] * t for t in T],
                                                      p.start_block)),
        "predictive": predictive,
        "predictive_softmax": predictive_softmax,
    }
    final_paths = {"classic": pe.simulate_classic(len(s.yt), len(s.points))}
    for way in ("predictive", "predictive_softmax", "maxlogit", "confidence", "entropy"):
        final_paths[way] = s.sims[way][1](s.te)(chosen[way])
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
    n_blocks = len(s.net.blocks)
    results = {way: _summarise(way, ran[way][1], ran[way][0], s.yt[:n_rt], final_paths[way], outs=s.te, y=s.yt,
                               costs=s.costs, pm=s.pm, deadline=s.deadline, points=s.points, n_blocks=n_blocks,
                               measured=measured.get(way), meter=meter) for way in runners}
    pm = s.pm
    other = PlatformModel(s.costs, s.profile, guarded=not pm.guarded)    # the other policy, for comparison
    sims_other = [other.simulate(t, "predictive", s.deadline)
                  for t in traces_from_paths(final_paths["predictive"], s.points, n_blocks)]
    pred = results["predictive"]
    pred["policy"] = cfg.energy.policy
    pred["other_policy"] = {
        "policy": "predicted" if pm.guarded else "guarded",
        "energy_j": sum(d.energy_j for d in sims_other) / len(sims_other), "energy_kind": "modelled",
        "deadline_met_pct": 100.0 * sum(d.met_deadline for d in sims_other) / len(sims_other),
        "modelled_latency_ms": 1e3 * sum(d.latency_s for d in sims_other) / len(sims_other)}
    s.phase("runtime and energy")
    pred.update(pe.prediction_accuracy(s.te[:-1], rule, final_paths["predictive"]))
    pred["controller"] = {"kind": ctl.kind, "dry_run": bool(ctl.dry), "set_point_calls": len(ctl.history),
                          "mhz_histogram": _hist(gov.chosen)}
    results["predictive_softmax"].update(pe.prediction_accuracy(s.te[:-1], rule_sm, final_paths["predictive_softmax"]))
    for way in ("predictive", "predictive_softmax"):     # the runtime's own cost: the engine's decisions
        tr = ran[way][1]
        results[way]["engine_overhead_us_per_input"] = 1e6 * sum(t.engine_s for t in tr) / len(tr)
        n_dec = sum(len(t.heads) for t in tr)
        results[way]["engine_us_per_decision"] = 1e6 * sum(t.engine_s for t in tr) / n_dec if n_dec else 0.0
    s.meter, s.results = meter, results


THRESHOLD_DEFINITION = {
    "authors": "T_k = |signed mean over training inputs and classes of the logits of exit k|, network in train "
               "mode (batch-norm batch statistics): the authors' script",
    "project": "T_k = mean over training inputs and classes of |logit| of exit k, network in eval mode"}


def _pct(new: float, ref: float) -> float:
    return 100.0 * (1.0 - new / ref) if ref else 0.0


def assemble(s: Study, seconds: float) -> dict:
    """exit.json: every way's figures, the comparisons, the settings and where each came from."""
    from ...report import machine_info

    cfg, data, points, T, chosen, results = s.cfg, s.data, s.points, s.T, s.chosen, s.results
    classic_val, deadline, profile, meter = s.classic_val, s.deadline, s.profile, s.meter
    val_macs = {w: float(s.costs.paths_total(s.sims[w][1](s.va)(chosen[w])).mean())
                for w in ("maxlogit", "confidence", "entropy")}

    strategies = {w: {**results[w], "threshold" if w != "maxlogit" else "beta": chosen[w], "val_macs": val_macs[w]}
                  for w in ("confidence", "entropy", "maxlogit")}
    best = min(strategies, key=lambda w: strategies[w]["val_macs"])
    pred, cl, ee = results["predictive"], results["classic"], strategies[best]
    p = cfg.predictive
    bound = classic_val - p.max_drop
    res = {
        "recipe": cfg.model_dump(mode="json"), "device": describe(data.device), "dataset": data.name, "model": cfg.model.name, "metric_name": "top1",
        "n_test": len(data.test), "n_val": len(data.val), "n_blocks": len(s.net.blocks), "exit_points": points,
        "style": cfg.exits.style, "train": cfg.train_mode, "exits_share": cfg.exits.share,
        "thresholds_T": T, "thresholds_T_mode": cfg.threshold_mode,
        "threshold_definition": THRESHOLD_DEFINITION[cfg.threshold_mode],
        "beta": chosen["predictive"],
        "beta_source": "given" if p.beta is not None else
                       f"calibrated on validation: least MACs with top-1 >= classic - {p.max_drop}",
        "rounds": p.rounds, "start_block": p.start_block, "give_up": p.give_up, "max_drop": p.max_drop,
        "classic_val_metric": classic_val, "val_floor": bound,
        "platform": profile.name, "platform_points_mhz": [q.freq_mhz for q in profile.points()],
        "latency_limit_ms": deadline * 1e3,
        "latency_limit_source": "given" if cfg.energy.latency_ms else f"{cfg.energy.slack} x classic latency at the top point (modelled)",
        "energy_kind": "modelled", "measured_energy": meter.source if meter is not None else None,
        "classic": cl,
        "early_exit": {**ee, "strategy": best, "strategies": strategies},
        "predictive": pred,
        "predictive_softmax": {**results["predictive_softmax"], "threshold": chosen["predictive_softmax"]},
        "at_chosen_points": {   # each way at its own validation-chosen setting: accuracies differ
            "computation_reduction_vs_classic": _pct(pred["macs_per_sample"], cl["macs_per_sample"]),
            "computation_reduction_vs_early_exit": _pct(pred["macs_per_sample"], ee["macs_per_sample"]),
            "energy_saving_vs_classic": _pct(pred["energy_j"], cl["energy_j"]),
            "energy_saving_vs_early_exit": _pct(pred["energy_j"], ee["energy_j"]),
            "ops_energy_saving_vs_classic": _pct(pred["energy_ops_j"], cl["energy_ops_j"]),
            "vs_each_strategy": {w: {"computation_reduction": _pct(pred["macs_per_sample"], r["macs_per_sample"]),
                                     "energy_saving": _pct(pred["energy_j"], r["energy_j"]),
                                     "ops_energy_saving": _pct(pred["energy_ops_j"], r["energy_ops_j"])}
                                 for w, r in strategies.items()}},
        "test_within_max_drop": {w: results[w]["metric"] >= cl["metric"] - p.max_drop
                                 for w in ("predictive", "confidence", "entropy", "maxlogit")},
        "sweep": s.sweeps, "warnings": s.notes,
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
    }
    eq = s.equal
    pick = lambda key, m: None if eq.get(key) is None else eq[key][m]
    res.update({   # the headline figures: at EQUAL test top-1 on the sweep curves (compare.py)
        "comparison": f"at equal accuracy: test top-1 {eq['target_top1']:.2f} (classic - {p.equal_drop}) on every "
                      "way's sweep curve; None where a way never reaches it",
        "computation_reduction_vs_classic": pick("predictive_vs_classic", "computation_reduction"),
        "computation_reduction_vs_early_exit": pick("predictive_vs_early_exit", "computation_reduction"),
        "energy_saving_vs_classic": pick("predictive_vs_classic", "energy_saving"),
        "energy_saving_vs_early_exit": pick("predictive_vs_early_exit", "energy_saving"),
        "latency_reduction_vs_classic": pick("predictive_vs_classic", "latency_reduction"),
        "vs_each_strategy": eq["predictive_vs_each_strategy"],
        "equal_accuracy": eq})
    curve = macs_curve(s.sweeps, eq["classic_top1"])
    res["equal_accuracy_curve"] = curve
    res["up_to"] = up_to(s.costs, s.pm, deadline, points, s.rule(1.0).first_exit(), s.te, s.yt, cl, s.sweeps)
    res["up_to"]["predictive_vs_early_exit_best"] = best_vs_early_exit(curve)
    res["timings_s"] = s.timings
    res["criteria_auroc"] = criteria_auroc(s.te[:-1], s.yt, points)
    return res


