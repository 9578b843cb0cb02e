"""One way's figures in exit.json: test top-1, MACs and modelled energy from the exact simulation of
every input's path; wall latency (and measured energy) from the batch-1 runtime."""
from __future__ import annotations

import torch


def accuracy(outs, paths, y) -> float:
    pick = torch.stack(outs, 0)[paths.exit, torch.arange(len(y))]
    return float((pick.argmax(-1) == y).double().mean() * 100)


def hist(values) -> dict[str, int]:
    h: dict[str, int] = {}
    for v in values:
        h[f"{v:g}"] = h.get(f"{v:g}", 0) + 1
    return h


def summarise(way, traces, preds, y_rt, paths, *, outs, y, costs, pm, deadline, points, n_blocks, measured,
               meter) -> dict:
    """One way's figures: test-set accuracy, MACs and modelled energy from the exact simulation of every
    input's path; wall latency (and measured energy) from the batch-1 runtime over its inputs."""
    from ...exits.runtime import traces_from_paths

    sim_traces = traces_from_paths(paths, points, n_blocks)
    schedule = "classic" if way == "classic" else "predictive" if way.startswith("predictive") else "early_exit"
    dv = [pm.simulate(t, schedule, deadline) for t in sim_traces]
    lat = torch.tensor([t.latency_s for t in traces], dtype=torch.float64) * 1e3
    agree = [(a.exit, a.heads, a.predictions) == (b.exit, b.heads, b.predictions)
             for a, b in zip(traces, sim_traces)]
    hist = torch.bincount(paths.exit, minlength=len(points) + 1).tolist()
    r = {
        "metric": accuracy(outs, paths, y),
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
