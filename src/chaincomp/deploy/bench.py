"""`chaincomp bench`: what the compression is worth on a real runtime, next to what the ledger counted.

Every model runs in ONNX Runtime (CPU, intra-op threads = cores) in one process and one sitting:
the run's FP32 baseline, the compressed model, and two peers built from the same baseline —
ONNX Runtime's own static int8 quantization and Torch-Pruning alone at the recipe's ratio — so
each ratio compares figures taken under the same machine load. Calls are interleaved round-robin
(the starting model rotates) after a warm-up, and each figure is a median with its IQR: on a
shared machine the spread says how far to trust the median. Interleaving needs ORT's thread spinning
off in every session: otherwise, with more than one thread, the idle sessions' spinning pool threads
take the cores from the one being timed (deployed.session).
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..device import cpu_field
from ..errors import UserError
from .runtime import Deployed, cores, openvino_kernels, optimized_ops, ort_metric
from .export import FORMATS, INTEGER_OPS, calibration_input, export_model, strip_fmc  # FORMATS: --format -> kernels
from .peers import front_note, ort_int8_peer, prune_peer, smaller_peers, smaller_specs  # noqa: F401

MAX_BATCH = 4096
# Interleaved sessions must not spin-wait (deployed.session says why); bench.json records it.
SPINNING = False
DEFAULT_BATCHES = (1, 64)


def validate(batches: list[int], runs: int, warmup: int, threads: int | None) -> list[int]:
    for b in batches:
        if not 1 <= b <= MAX_BATCH:
            raise UserError(f"--batch: {b} is not a batch size; give 1..{MAX_BATCH}")
    if not 1 <= runs <= 100_000:
        raise UserError(f"--runs: {runs}; give 1..100000 timed runs")
    if not 0 <= warmup <= 100_000:
        raise UserError(f"--warmup: {warmup}; give 0..100000 warm-up runs")
    if threads is not None and not 1 <= threads <= 1024:
        raise UserError(f"--threads: {threads}; give 1..1024")
    return sorted(set(batches))


def inputs_for(data, batch: int, count: int = 8) -> list[np.ndarray]:
    """Distinct test inputs of one batch size (repeated when the split is smaller): an exit network's
    latency depends on the input, so every model sees the same rotating sequence."""
    x = data.test.x if data.test.stacked else data.train.x
    n = len(x)
    reps = -(-batch * count // n) if n < batch * count else 1
    pool = torch.cat([x] * reps) if reps > 1 else x
    k = max(1, min(count, len(pool) // batch))
    return [np.ascontiguousarray(pool[i * batch:(i + 1) * batch].numpy(), np.float32) for i in range(k)]


def stats(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": round(statistics.median(ms), 4), "iqr_ms": round(q[2] - q[0], 4),
            "min_ms": round(min(ms), 4), "n": len(ms)}


def time_models(models: dict, inputs: list[np.ndarray], runs: int, warmup: int) -> dict[str, dict]:
    return {n: stats(v) for n, v in interleaved_ms(models, inputs, runs, warmup).items()}


def interleaved_ms(models: dict, inputs: list[np.ndarray], runs: int, warmup: int) -> dict[str, list[float]]:
    """Wall ms per call of every model, calls interleaved (each run starts at the next model) so that a
    change of machine load falls on all of them alike."""
    names = list(models)
    for name in names:
        for i in range(warmup):
            models[name](inputs[i % len(inputs)])
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        x = inputs[r % len(inputs)]
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            t0 = time.perf_counter()
            models[name](x)
            ms[name].append((time.perf_counter() - t0) * 1000)
    return ms


RUNTIMES = ("ort", "openvino")


def parse_objective(text: str | None) -> dict:
    """`bitops` (default) or `latency:RUNTIME:bBATCH:tTHREADS` (e.g. latency:ort:b1:t1): the cost a search
    minimises beside the metric."""
    if text in (None, "", "bitops"):
        return {"kind": "bitops"}
    parts = text.split(":")
    try:
        if parts[0] != "latency" or len(parts) != 4 or parts[1] not in RUNTIMES or parts[2][0] != "b" \
                or parts[3][0] != "t":
            raise ValueError
        obj = {"kind": "latency", "runtime": parts[1], "batch": int(parts[2][1:]), "threads": int(parts[3][1:])}
    except (ValueError, IndexError):
        raise UserError(f"--objective: '{text}'; give bitops or latency:RUNTIME:bBATCH:tTHREADS with RUNTIME one "
                        f"of {', '.join(RUNTIMES)} (e.g. latency:ort:b1:t1)") from None
    validate([obj["batch"]], 1, 0, obj["threads"])
    return obj


def measure_latency(run_dir: str | Path, objective: dict, runs: int = 50, warmup: int = 5, data=None) -> dict:
    """Export a run folder's model (the Q/DQ file: ORT fuses it into its integer kernels, OpenVINO reads it) into
    RUN_DIR/latency/ and time it at the objective's batch and threads: median and IQR in ms."""
    from ..chain import load_run

    run = load_run(run_dir, data=data)
    strip_fmc(run.model)
    folder = Path(run_dir) / "latency"
    desc = export_model(run.model, calibration_input(run.data), folder / "model.onnx", "qdq",
                        target=objective["runtime"])  # weight codes for that runtime (targets.choose_weights)
    d = Deployed(folder, desc, objective["threads"], spinning=False, runtime=objective["runtime"])
    t = time_models({"m": d}, inputs_for(run.data, objective["batch"]), runs, warmup)["m"]
    return {**t, "runtime": objective["runtime"], "batch": objective["batch"], "threads": objective["threads"]}


def _counted_bitops(run) -> tuple[float, float]:
    """(baseline, stage) BitOps per sample as the ledger counted them (results.json when present)."""
    from ..chain import CheckpointFile, read_results
    from ..io import read_model_json

    res = run.out / "results.json"
    base = read_results(res)["baseline"]["bitops"] if res.is_file() else None
    if base is None:
        base = read_model_json(run.out / "checkpoints" / "00-baseline.json", CheckpointFile,
                               allow_nan=True).entry.bitops
    return float(base), float(run.entry["bitops"])


def build_models(run, folder: Path, peers: bool, peer_epochs: int, echo, smaller: bool = False,
                 fmt: str = "qdq") -> dict[str, dict]:
    """The models timed: baseline, the compressed model in `fmt` and, beside it, in the other format."""
    from ..energy.cost import profile_model

    if fmt not in FORMATS:
        raise UserError(f"--format: '{fmt}'; choose one of {', '.join(FORMATS)}")
    sample = calibration_input(run.data)
    base_bitops, stage_bitops = _counted_bitops(run)
    stripped = strip_fmc(run.model)
    if stripped:
        echo(f"note: {stripped['note']}")
    models = {"baseline": {"desc": export_model(run.baseline, sample, folder / "baseline.onnx"), "bitops": base_bitops},
              "compressed": {"desc": export_model(run.model, sample, folder / "compressed.onnx", FORMATS[fmt]),
                             "bitops": stage_bitops, "stripped": stripped, "format": fmt}}
    if models["compressed"]["desc"]["layers"]:  # the same model in the other format, timed beside
        other = "qop" if fmt == "qdq" else "qdq"
        models[f"compressed_{other}"] = {"desc": export_model(run.model, sample, folder / f"compressed_{other}.onnx",
                                                              FORMATS[other]), "bitops": stage_bitops, "format": other}
    if peers:
        try:
            ort_int8_peer(folder / "baseline.onnx", folder / "ort_int8.onnx", run.data)
            models["ort_int8"] = {"desc": {"files": ["ort_int8.onnx"], "exit_rule": None, "kind": "ort-static-int8"},
                                  "bitops": base_bitops * 64 / 1024, "bitops_note": "nominal: every conv/gemm W8A8"}
        except Exception as e:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
            echo(f"peer ort_int8 skipped: {type(e).__name__}: {str(e)[:160]}")
        pruned, info = prune_peer(run.baseline, run, peer_epochs)
        models["tp_prune"] = {"desc": export_model(pruned, sample, folder / "tp_prune.onnx"), "info": info,
                              "bitops": float(profile_model(pruned, sample).total()["bitops"])}
    if smaller:
        models |= smaller_peers(run, folder, echo)
    return models


def bench_run(run_dir: str | Path, batches: list[int] | None = None, runs: int = 30, warmup: int = 5,
              threads: int | None = None, peers: bool = True, peer_epochs: int = 1, stage: str | None = None,
              data=None, echo=print, smaller: bool = False, fmt: str = "qdq") -> dict:
    """Export, run and time every model; writes RUN_DIR/bench.json and RUN_DIR/bench.md."""
    from ..chain import load_run
    from ..io import RunLock

    batches = validate(list(batches or DEFAULT_BATCHES), runs, warmup, threads)
    run = load_run(run_dir, stage, data=data)
    with RunLock(run.out):  # bench/ and bench.json live in the run folder: one writer at a time
        return _bench(run, batches, runs, warmup, threads, peers, peer_epochs, echo, smaller, fmt)


def _bench(run, batches: list[int], runs: int, warmup: int, threads: int | None, peers: bool, peer_epochs: int,
           echo, smaller: bool = False, fmt: str = "qdq") -> dict:
    import onnxruntime as ort

    from .. import __version__
    from ..io import atomic_write_text, write_json

    folder = run.out / "bench"
    threads = threads or cores()
    models = build_models(run, folder, peers, peer_epochs, echo, smaller, fmt)
    info: dict[str, dict] = {}
    runners = {}
    for name, m in models.items():
        d = Deployed(folder, m["desc"], threads, spinning=SPINNING)
        runners[name] = d
        ops = optimized_ops(d.files)
        info[name] = {"files": m["desc"]["files"], "kind": m["desc"]["kind"],
                      "metric": round(ort_metric(d, run.data), 4),
                      "bitops": m["bitops"], "bitops_reduction": round(models["baseline"]["bitops"] / m["bitops"], 3),
                      "integer_ops": {k: v for k, v in ops.items() if k in INTEGER_OPS}, "ort_ops": ops,
                      **{k: m[k] for k in ("info", "bitops_note", "stripped", "format") if m.get(k)}}
        if m["desc"].get("weights") and m["desc"]["layers"]:
            info[name]["weights"] = m["desc"]["weights"]
        if m["desc"].get("kernels"):
            info[name]["kernels"] = m["desc"]["kernels"]
    if models["compressed"]["desc"]["layers"]:  # the model in OpenVINO, when it is installed
        try:
            runners["qdq_openvino"], info["qdq_openvino"] = _openvino(run, folder, threads, info["compressed"])
            echo(f"OpenVINO: {info['qdq_openvino']['openvino_kernels']['note']}")
        except UserError as e:
            echo(f"OpenVINO skipped: {e}")
    rows = []
    for b in batches:
        t = time_models({n: (lambda x, d=d: d(x)) for n, d in runners.items()}, inputs_for(run.data, b), runs, warmup)
        base = t["baseline"]["median_ms"]
        row = {"batch": b}
        for name, s in t.items():
            row[name] = {**s, "throughput_per_s": round(b * 1000 / s["median_ms"], 2),
                         "speedup": round(base / s["median_ms"], 3), "metric": info[name]["metric"]}
        row |= {"baseline_ms": base, "compressed_ms": t["compressed"]["median_ms"],
                "speedup": row["compressed"]["speedup"], "baseline_metric": info["baseline"]["metric"],
                "compressed_metric": info["compressed"]["metric"]}
        rows.append(row)
    result = {"format": 1, "chaincomp": __version__, "run": str(run.out.resolve()), "stage": run.stage,
              "recipe": run.recipe.name, "dataset": run.data.name, "model": run.recipe.model.name,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "metric_name": run.data.metric_name,
              "machine": f"{cpu_name()}, {platform.machine()} {platform.system()}",
              "cores": cores(), "threads": threads, "thread_spinning": SPINNING,
              "load_avg": [round(x, 2) for x in _loadavg()],
              "onnxruntime": ort.__version__, "runs": runs, "warmup": warmup, "models": info, "batches": rows}
    write_json(run.out / "bench.json", result)
    atomic_write_text(run.out / "bench.md", bench_markdown(result))
    print_bench(result)
    echo(f"bench: {run.out / 'bench.json'}  table: {run.out / 'bench.md'}")
    return result


def _openvino(run, folder: Path, threads: int, compressed: dict) -> tuple[Deployed, dict]:
    """The compressed model as a Q/DQ file for OpenVINO (weights chosen for it: portable int8), its metric
    measured in OpenVINO, and whether OpenVINO's executed graph runs the layers on integer kernels."""
    desc = export_model(run.model, calibration_input(run.data), folder / "openvino.onnx", "qdq", target="openvino")
    d = Deployed(folder, desc, threads, runtime="openvino")
    kern = openvino_kernels(d.runner.sessions if d.runner else [d.sess])
    return d, {**{k: compressed[k] for k in ("kind", "bitops", "bitops_reduction")}, "files": desc["files"],
               "runtime": "openvino " + _openvino_version(), "metric": round(ort_metric(d, run.data), 4),
               "weights": desc["weights"], "openvino_kernels": kern,
               "integer_ops": {k: v for k, v in kern["integer_layers"].items()}, "ort_ops": {}}


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def cpu_name() -> str:
    return cpu_field("model name") or platform.processor() or platform.machine()


def _loadavg() -> tuple[float, ...]:
    try:
        import os
        return os.getloadavg()
    except (OSError, AttributeError):
        return ()


LABELS = {"baseline": "FP32 baseline", "compressed": "chaincomp (run, int8 kernels)",
          "compressed_qdq": "chaincomp (same model, Q/DQ file)",
          "compressed_qop": "chaincomp (same model, QOperator file)", "qdq_openvino": "chaincomp Q/DQ file in OpenVINO",
          "ort_int8": "ORT static int8 (peer)", "tp_prune": "Torch-Pruning alone (peer)"}


def label(name: str, m: dict) -> str:
    if name == "compressed" and m.get("format"):
        return f"chaincomp (run, {'Q/DQ' if m['format'] == 'qdq' else 'QOperator'} file)"
    return LABELS.get(name, name)


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, m in result["models"].items():
        cells = [label(name, m), f"{m['metric']:.2f}", f"{m['bitops_reduction']:.1f}x"]
        for r in result["batches"]:
            s = r[name]
            cells += [f"{s['median_ms']:.3f} ± {s['iqr_ms']:.3f}", f"{s['speedup']:.2f}x"]
        rows.append(cells)
    return rows


def headers(result: dict) -> list[str]:
    h = ["model", result["metric_name"] + " (ORT)", "BitOps reduction (counted)"]
    for r in result["batches"]:
        h += [f"ms b={r['batch']} (median ± IQR)", f"speed-up b={r['batch']}"]
    return h


def bench_markdown(result: dict) -> str:
    h = headers(result)
    lines = [f"# Deployment benchmark: {Path(result['run']).name} (stage {result['stage']})", "",
             f"Recipe {result.get('recipe')}: {result.get('model')} on {result.get('dataset')}.",
             f"{result['date']}, {result['machine']}, {result['cores']} cores, ONNX Runtime {result['onnxruntime']} "
             f"CPU, {result['threads']} intra-op threads"
             f"{' (spinning off)' if result.get('thread_spinning') is False else ''}, {result['runs']} runs after "
             f"{result['warmup']} warm-up, "
             f"load average {result['load_avg']}.", "",
             "| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    lines += ["", "Counted = BitOps the ledger counts (MACs x weight bits x activation bits); measured = latency "
              "ratio against the FP32 baseline in this run. The gap between the two columns is the saving the "
              "runtime does not deliver.", ""]
    for name, m in result["models"].items():
        note = m.get("kernels", {}).get("note") or m.get("bitops_note") or ""
        if "info" in m:
            note = (f"ratio {m['info']['ratio']}, {m['info']['importance']} importance, "
                    f"{m['info']['finetune_epochs']} fine-tuning epoch(s)")
        if "openvino_kernels" in m:
            note = f"OpenVINO ran {m['openvino_kernels']['note']}."
        if m.get("weights"):
            note += f" Weight codes: {m['weights']['form']} ({m['weights']['why']})."
        if m.get("stripped"):
            note += f" Note: {m['stripped']['note']}."
        ops = ", ".join(f"{k} x{v}" for k, v in m["integer_ops"].items()) or "none"
        lines.append(f"- {label(name, m)}: integer kernels: {ops}. {note}")
    front = front_note(result)
    if front:
        lines += ["", "Against the smaller networks trained with the same budget and int8-quantized by ORT:", *front]
    return "\n".join(lines) + "\n"


def print_bench(result: dict) -> None:
    from rich.table import Table

    from ..progress import console

    t = Table(title=f"bench: {Path(result['run']).name} ({result['stage']}), ORT {result['onnxruntime']}, "
                    f"{result['threads']} threads")
    for i, h in enumerate(headers(result)):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in table_rows(result):
        t.add_row(*r)
    console.print(t)
