"""The ways compared as the paper states its figures: at EQUAL accuracy, read on each way's
accuracy-against-cost curve, and the "up to" figure apart, labelled as the easy end of the range.

Each way's threshold sweep on the test split gives points (MACs, top-1). Its curve is the Pareto
front (no cheaper setting is as accurate), joined by straight lines: a point between two settings
is reached by running the cheaper one on a share of the inputs and the other on the rest, so the
interpolation is achievable, not a fit. At a target top-1 each way's MACs, modelled energy and
measured latency are read on that line; energy (DVFS model, at the study's latency limit) and
wall latency are computed at the two settings that bracket the target and mixed with the same
weight. The target is the classic network's test top-1 minus ``predictive.equal_drop`` points.

"Up to": the reduction if every input left at the first exit checked (L0), whatever its accuracy:
the paper's 96.2% is this figure on its ResNet-34 (3.77% of the MACs reach the first exit).
"""
from __future__ import annotations

import torch

EARLY = ("confidence", "entropy", "maxlogit")
PREDICTIVE = ("predictive", "predictive_softmax")


def frontier(rows: list[dict], cost: str = "test_macs", metric: str = "test_metric") -> list[dict]:
    """The rows no cheaper row matches in accuracy, by increasing cost (and accuracy)."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r[cost], -r[metric])):
        if r[metric] > best + 1e-12:
            front.append(r)
            best = r[metric]
    return front


def at_accuracy(rows: list[dict], target: float, cost: str = "test_macs",
                metric: str = "test_metric") -> tuple[dict, dict, float] | None:
    """(cheaper row, dearer row, weight of the dearer) where the way's curve first reaches `target`;
    None when no setting reaches it. A row that reaches it on its own has weight 0."""
    front = frontier(rows, cost, metric)
    if not front or front[-1][metric] < target - 1e-9:
        return None
    if front[0][metric] >= target - 1e-9:
        return front[0], front[0], 0.0
    for lo, hi in zip(front, front[1:]):
        if lo[metric] < target <= hi[metric] + 1e-9:
            return lo, hi, (target - lo[metric]) / (hi[metric] - lo[metric])
    return front[-1], front[-1], 0.0


def mix(bracket: tuple[dict, dict, float], key: str) -> float | None:
    lo, hi, w = bracket
    if lo.get(key) is None or hi.get(key) is None:
        return None
    return (1 - w) * lo[key] + w * hi[key]


def pct(new: float | None, ref: float | None) -> float | None:
    if new is None or ref is None or not ref:
        return None
    return 100.0 * (1.0 - new / ref)


def brackets(sweeps: dict[str, list[dict]], target: float) -> dict[str, tuple | None]:
    return {w: at_accuracy(rows, target) for w, rows in sweeps.items()}


KEYS = (("macs", "test_macs"), ("energy_ops_j", "test_ops_j"), ("energy_j", "energy_j"),
        ("latency_ms", "latency_ms"), ("deadline_met_pct", "deadline_met_pct"))


def readout(sweeps: dict[str, list[dict]], classic: dict, target: float) -> dict:
    """Every way at `target` top-1 and the reductions between them (None: a way never reaches it)."""
    ways: dict[str, dict | None] = {}
    for w, b in brackets(sweeps, target).items():
        if b is None:
            ways[w] = None
            continue
        lo, hi, wt = b
        ways[w] = {k: mix(b, src) for k, src in KEYS}
        ways[w]["settings"] = [lo["setting"], hi["setting"]]
        ways[w]["weight"] = wt
    reach = [w for w in EARLY if ways.get(w)]
    ref = min(reach, key=lambda w: ways[w]["macs"]) if reach else None
    cl = {"macs": classic["macs_per_sample"], "energy_ops_j": classic["energy_ops_j"],
          "energy_j": classic["energy_j"], "latency_ms": classic["latency_ms_trimmed"]}

    def vs(a: dict | None, b: dict | None) -> dict | None:
        if a is None or b is None:
            return None
        return {"computation_reduction": pct(a["macs"], b["macs"]), "energy_saving": pct(a["energy_j"], b["energy_j"]),
                "ops_energy_saving": pct(a["energy_ops_j"], b["energy_ops_j"]),
                "latency_reduction": pct(a["latency_ms"], b["latency_ms"])}

    out = {"target_top1": target, "ways": ways, "early_exit_reference": ref,
           "early_exit_vs_classic": vs(ways.get(ref) if ref else None, cl)}
    for p in PREDICTIVE:
        out[f"{p}_vs_classic"] = vs(ways.get(p), cl)
        out[f"{p}_vs_early_exit"] = vs(ways.get(p), ways.get(ref) if ref else None)
        out[f"{p}_vs_each_strategy"] = {w: vs(ways.get(p), ways.get(w)) for w in EARLY}
    return out


def macs_curve(sweeps: dict[str, list[dict]], classic_top1: float, drops=(0.0, 0.25, 0.5, 1.0, 2.0, 5.0)) -> list[dict]:
    """MACs of every way at several targets below the classic network's top-1 (MACs only: energy and
    latency are measured at the headline target)."""
    rows = []
    for d in drops:
        t = classic_top1 - d
        rows.append({"target_top1": t, "drop": d,
                     "macs": {w: (mix(b, "test_macs") if b else None) for w, b in brackets(sweeps, t).items()}})
    return rows


def up_to(costs, pm, deadline: float, points: list[int], first: int, test_outs: list[torch.Tensor],
          y: torch.Tensor, classic: dict, sweeps: dict[str, list[dict]]) -> dict:
    """The easy end of the range: every input leaving at the first exit checked, and each way's
    cheapest swept setting, against the classic network; with the accuracy each one has."""
    from ...exits.runtime import Trace

    out: dict = {"label": "ceiling at the easy end of the threshold range, NOT an equal-accuracy figure"}
    if first < len(points):
        t = Trace(first, points[first], [first])
        c = costs.cost(t)["macs"]
        e = pm.simulate(t, "predictive", deadline).energy_j
        out["first_exit"] = {
            "exit_block": points[first], "macs": c, "top1": float((test_outs[first].argmax(-1) == y).double().mean() * 100),
            "computation_reduction_vs_classic": pct(c, classic["macs_per_sample"]),
            "energy_saving_vs_classic": pct(e, classic["energy_j"]),
            "definition": "every input leaves at the first exit checked (L0): blocks up to it plus its head"}
    cheapest = {}
    for w, rows in sweeps.items():
        r = min(rows, key=lambda r: r["test_macs"])
        cheapest[w] = {"setting": r["setting"], "top1": r["test_metric"], "macs": r["test_macs"],
                       "computation_reduction_vs_classic": pct(r["test_macs"], classic["macs_per_sample"])}
    out["cheapest_setting"] = cheapest
    return out


def best_vs_early_exit(curve: list[dict]) -> dict | None:
    """The largest computation reduction of predictive exit against the best early exit over the
    targets of `macs_curve` where both reach: the "up to" against early exit."""
    best = None
    for row in curve:
        m = row["macs"]
        ee = [m[w] for w in EARLY if m.get(w) is not None]
        if m.get("predictive") is None or not ee:
            continue
        red = pct(m["predictive"], min(ee))
        if best is None or red > best["computation_reduction"]:
            best = {"computation_reduction": red, "target_top1": row["target_top1"], "drop": row["drop"]}
    return best


def _trimmed_ms(traces, cut: float = 0.05) -> float:
    """Mean wall time per input without the fastest and slowest `cut` share: a mean (so that mixing two
    settings mixes their times) that a scheduler stall on a shared machine does not drag."""
    v = sorted(t.latency_s for t in traces)
    k = int(len(v) * cut)
    v = v[k:len(v) - k] or v
    return 1e3 * sum(v) / len(v)


def measure_equal_accuracy(s) -> dict:
    """The study phase: bracket the target on every way's test curve, run the batch-1 runtime at the
    bracketing settings (and the classic network), interleaved, and read every way at the target."""
    from ...exits.runtime import ExitRuntime, run_interleaved, traces_from_paths
    from ... import progress

    cfg, p = s.cfg, s.cfg.predictive
    classic_top1 = float((s.te[-1].argmax(-1) == s.yt).double().mean() * 100)
    target = classic_top1 - p.equal_drop
    sweeps = {w: [dict(r) for r in rows] for w, rows in s.sweeps.items()}
    br = brackets(sweeps, target)
    rt = ExitRuntime(s.net)
    T, L0 = s.T, p.start_block

    def runner(way: str, st: float):
        if way in PREDICTIVE:
            rule = s.rule(st, "maxlogit" if way == "predictive" else "confidence")
            return lambda x: rt.predictive(x, rule)
        thr = [st * t for t in T] if way == "maxlogit" else st
        return lambda x: rt.early_exit(x, way, thr, L0)

    need = {(w, r["setting"]) for w, b in br.items() if b for r in b[:2]}
    fns = {"classic": rt.classic, **{f"{w}@{st}": runner(w, st) for w, st in sorted(need)}}
    n = min(len(s.data.test), cfg.runtime.limit or len(s.data.test))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.runtime.threads)
    try:
        with progress.task(f"runtime at equal accuracy ({n} inputs x {len(fns)} settings)", n * len(fns)) as bar:
            ran = run_interleaved(fns, s.data.test.x[:n], warmup=cfg.runtime.warmup, bar=bar)
    finally:
        torch.set_num_threads(threads)
    n_blocks = len(s.net.blocks)
    for w, st in need:
        paths = s.sims[w][1](s.te)(st)
        sched = "predictive" if w in PREDICTIVE else "early_exit"
        dv = [s.pm.simulate(t, sched, s.deadline) for t in traces_from_paths(paths, s.points, n_blocks)]
        for r in sweeps[w]:
            if r["setting"] == st:
                r.update(energy_j=sum(d.energy_j for d in dv) / len(dv),
                         deadline_met_pct=100.0 * sum(d.met_deadline for d in dv) / len(dv),
                         latency_ms=_trimmed_ms(ran[f"{w}@{st}"][1]))
    classic = dict(s.results["classic"], latency_ms_trimmed=_trimmed_ms(ran["classic"][1]))
    out = readout(sweeps, classic, target)
    out.update(drop_below_classic=p.equal_drop, classic_top1=classic_top1, classic_latency_ms=classic["latency_ms_trimmed"],
               n_runtime=n, latency_kind="measured: trimmed mean wall time per input (5% cut each end), batch 1, "
                                         "mixed between the two bracketing settings like the MACs",
               energy_kind="modelled (DVFS, at the study's latency limit), mixed between the two bracketing settings",
               definition="each way's test sweep as a Pareto curve of top-1 against MACs, joined by straight lines "
                          "(a mix of two settings), read at the target top-1")
    return out
