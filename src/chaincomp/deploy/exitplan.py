"""Exits where they pay: which exits of an exit network to keep in the exported files.

Every kept exit costs each row that reaches it one more session call, its head and the driver's own
work (the rule on its logits, the pending rows' features copied on); it saves, for the rows whose rule
fires there, everything after it. Both are measured: a cost table (ms per row: each stretch of blocks
between exit points, each head, one session call in ONNX Runtime on the exported pieces, one driver
step of runtime.ExitRunner), and which exit fires for which row (the rule on the validation split, in
PyTorch).
The plan is the set of exits with the lowest expected time per row (every subset up to 12 exits,
greedy beyond); dropping an exit merges its segment with the next (one session call fewer). Each
exit's saving and cost under that plan, and why it was dropped or kept, go to the manifest.
Why apart from export.py: timing and choosing are a separate concern from writing graphs; the plan
is a pure function of the table (tests inject one)."""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..exits.model import ExitNetwork
from ..exits.rules import fires
from .runtime import ExitRunner, session


def fires_matrix(model: ExitNetwork, data, split: str = "val") -> np.ndarray:
    """rows x exits: whether the exit rule fires at each exit for each row (PyTorch, the given split)."""
    rule, cols = model.exit_rule, []
    with torch.no_grad():
        for x, _ in getattr(data, split).batches(256):
            outs = model.eval()(x)[:-1]
            cols.append(torch.stack([fires(o, rule["criterion"], rule["threshold"], k)
                                     for k, o in enumerate(outs)], 1).numpy())
    return np.concatenate(cols)


def expected_ms(fires: np.ndarray, kept: tuple[int, ...], costs: dict) -> float:
    """Mean time per row with only the exits `kept` (indices into the exit points)."""
    blocks, heads, call, driver = costs["blocks"], costs["heads"], costs["call"], costs.get("driver", 0.0)
    n, e = fires.shape
    total, start, pending = 0.0, 0, np.ones(n, bool)
    for k in [*kept, e]:  # e: the final segment (its head is heads[e]; no rule after it)
        seg = call + sum(blocks[start:k + 1]) + heads[k] + (driver if k < e else 0.0)
        total += pending.sum() * seg
        if k < e:
            pending &= ~fires[:, k]
        start = k + 1
    return total / max(n, 1)


def plan(fires: np.ndarray, costs: dict, exhaustive_up_to: int = 12) -> dict:
    """The kept exits with the lowest expected time, and each exit's saving, cost and reason (ms per row)."""
    e = fires.shape[1]
    if e <= exhaustive_up_to:
        subsets = [c for r in range(e + 1) for c in itertools.combinations(range(e), r)]
        best = min(subsets, key=lambda s: (round(expected_ms(fires, s, costs), 9), len(s)))  # ties: fewer calls
    else:  # greedy: drop the exit whose removal helps most while any does
        best = tuple(range(e))
        while True:
            cands = [tuple(x for x in best if x != k) for k in best]
            better = [c for c in cands if expected_ms(fires, c, costs) < expected_ms(fires, best, costs)]
            if not better:
                break
            best = min(better, key=lambda s: expected_ms(fires, s, costs))
    exits = []
    for k in range(e):
        without = tuple(x for x in best if x != k)
        with_k = tuple(sorted({*best, k}))
        earlier = [x for x in best if x < k]
        reached = ~fires[:, earlier].any(1) if earlier else np.ones(len(fires), bool)
        reach = float(reached.mean()) if len(fires) else 0.0
        cost = reach * (costs["heads"][k] + costs["call"] + costs.get("driver", 0.0))
        saving = cost + expected_ms(fires, without, costs) - expected_ms(fires, with_k, costs)
        keep = k in best
        exits.append({"exit": k, "kept": keep, "saving_ms": round(saving, 6), "cost_ms": round(cost, 6),
                      "rows_reaching": round(reach, 4),
                      "rows_exiting": round(float((reached & fires[:, k]).mean()) if len(fires) else 0.0, 4),
                      "reason": (f"kept: saving {saving:.4g} ms/row, cost {cost:.4g} ms/row" if keep else
                                 f"dropped: saving {saving:.4g} ms/row < cost {cost:.4g} ms/row (head "
                                 f"{costs['heads'][k]:.4g} + session call {costs['call']:.4g} + driver "
                                 f"{costs.get('driver', 0.0):.4g} ms, for "
                                 f"{reach:.0%} of rows reaching it)")})
    return {"kept": list(best), "expected_ms": round(expected_ms(fires, best, costs), 6),
            "expected_ms_all_exits": round(expected_ms(fires, tuple(range(e)), costs), 6), "exits": exits}


def keep_exits(model: ExitNetwork, kept: list[int]) -> ExitNetwork:
    """The same network (shared modules) with only the kept exits (indices into its exit points); a list of
    thresholds keeps the kept exits' entries."""
    points = model.exit_points
    out = ExitNetwork(model.blocks, model.head, {points[k]: model.exits[str(points[k])] for k in kept})
    rule = dict(model.exit_rule)
    if isinstance(rule.get("threshold"), (list, tuple)):
        rule["threshold"] = [rule["threshold"][k] for k in kept]
    out.exit_rule = rule
    return out.eval()


def _median_ms(call, runs: int, warmup: int = 5) -> float:
    """Median wall ms of call() over `runs` calls, after `warmup` untimed ones."""
    import time

    for _ in range(warmup):
        call()
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        ms.append((time.perf_counter() - t0) * 1000)
    return float(np.median(ms))


def _time(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    s = session(path, threads)
    return _median_ms(lambda: s.run(None, {"input": x}), runs)


def measure_costs(model: ExitNetwork, sample: torch.Tensor, write, segment, batch: int = 1, threads: int = 1,
                  runs: int = 200) -> dict:
    """The cost table, ms per row at `batch`: each stretch of blocks (as its own Q/DQ file, minus one call),
    each head (the stretch with its head, minus the stretch alone), one session call (an Identity graph).
    write, segment: export.write_onnx and export.Segment (passed in: export imports this module)."""
    from onnx import TensorProto, helper

    from ..io import atomic_write_bytes

    bounds = [*model.exit_points, len(model.blocks) - 1]
    heads = [model.exits[str(p)] for p in model.exit_points] + [model.head]
    blocks, head_ms, x = [], [], sample
    with tempfile.TemporaryDirectory() as d:
        ident = Path(d) / "call.onnx"
        g = helper.make_graph([helper.make_node("Identity", ["input"], ["y"])], "call",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        atomic_write_bytes(ident, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                                                    ir_version=8).SerializeToString())
        xb = np.ascontiguousarray(np.resize(x[:1].numpy(), (batch, *x.shape[1:])), np.float32)
        call = _time(ident, xb, threads, runs)
        start = 0
        for k, (p, head) in enumerate(zip(bounds, heads)):
            items = [(f"blocks.{i}", model.blocks[i]) for i in range(start, p + 1)]
            xb = np.ascontiguousarray(np.resize(x[:1].numpy(), (batch, *x.shape[1:])), np.float32)
            t = {}
            for tag, h in (("blocks", torch.nn.Identity()), ("head", head)):
                f = Path(d) / f"piece{k}_{tag}.onnx"
                write(segment(items, ("head", h), False).eval(), x, f, "qdq")
                t[tag] = _time(f, xb, threads, runs)
            blocks.append(max(t["blocks"] - call, 0.0) / batch)
            head_ms.append(max(t["head"] - t["blocks"], 0.0) / batch)
            with torch.no_grad():
                for _, m in items:
                    x = m(x)
                if k == 0:
                    driver = _time_driver(model.exit_rule, x, head(x), batch, runs)
            start = p + 1
    return {"blocks": blocks, "heads": head_ms, "call": call / batch, "driver": driver / batch, "batch": batch,
            "threads": threads, "runs": runs,
            "how": "ORT medians of the Q/DQ pieces; blocks = stretch - call, head = stretch with head - stretch; "
                   "driver = one ExitRunner.step after the first exit (the rule, the pending rows' features)"}


def _time_driver(rule: dict, feats: torch.Tensor, logits: torch.Tensor, batch: int, runs: int) -> float:
    """Median ms of the driver's own work after an exit (runtime.ExitRunner.step) at `batch` rows, on the
    first exit's real features and logits, none of the rows leaving (the copy of every row is the worst case)."""
    runner = ExitRunner([], dict(rule, threshold=float("inf")) if rule["criterion"] != "entropy" else
                        dict(rule, threshold=float("-inf")))
    res = [np.ascontiguousarray(np.resize(t[:1].numpy(), (batch, *t.shape[1:])), np.float32) for t in (feats, logits)]
    out, idx, rows = np.empty_like(res[1]), np.zeros(batch, np.int64), np.arange(batch)
    return _median_ms(lambda: runner.step(res, rows, 0, out, idx), runs, warmup=0)


def apply(model, data, sample: torch.Tensor, write, segment, costs: dict | None = None, batch: int = 1,
          threads: int = 1) -> tuple:
    """(model with the exits that pay, the plan for the manifest); `costs` injected skips the timing."""
    if not isinstance(model, ExitNetwork) or not model.exit_points:
        return model, {"mode": "measured", "note": "no exits"}
    measured = costs is None
    costs = measure_costs(model, sample, write, segment, batch, threads) if measured else costs
    p = plan(fires_matrix(model, data), costs)
    points = model.exit_points
    p |= {"mode": "measured", "costs": costs, "costs_measured": measured, "exit_points": points,
          "kept_points": [points[k] for k in p["kept"]], "rule_split": "val"}
    for x in p["exits"]:
        x["point"] = points[x["exit"]]
    return keep_exits(model, p["kept"]), p
