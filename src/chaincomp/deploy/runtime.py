"""Running an exported model in ONNX Runtime: sessions, the exit-aware driver over segment files,
and the test-split metric. Why apart from export.py: bench and user code need only this to run
what `chaincomp export` wrote; writing graphs and running them are separate concerns."""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import UserError


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session(path: str | Path, threads: int | None = None, optimized: str | Path | None = None,
            spinning: bool = True):
    """An ORT CPU session. `spinning=False` stops its idle pool threads from busy-waiting for work: needed
    when several sessions take turns on the same cores (as `bench` does), or the idle ones' spinning
    threads steal the cores of the one running (measured: FP32 ResNet-56 at 2 threads, 45 ms alone,
    81 ms interleaved with three spinning sessions)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        so.optimized_model_filepath = str(optimized)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: ONNX Runtime cannot load it ({first})") from None


class OpenVINOSession:
    """The same file in OpenVINO (CPU plugin), with ORT's `run(names, feeds)` so the exit driver takes
    either. OpenVINO reads the Q/DQ form and runs what it can on its integer (u8/i8) kernels."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise UserError(f"OpenVINO is not installed ({e}); pip install openvino") from None
        core = ov.Core()
        try:
            self.compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads or cores(),
                                                                  "PERFORMANCE_HINT": "LATENCY"})
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{path}: OpenVINO cannot load it ({first})") from None
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_names() for o in self.compiled.outputs]  # a tensor may carry several names

    def run(self, names, feeds: dict) -> list[np.ndarray]:
        res = self.request.infer(feeds)
        out = [np.asarray(res[o]) for o in self.compiled.outputs]
        return out if names is None else [out[next(i for i, ns in enumerate(self.outputs) if n in ns)] for n in names]

    def layer_precisions(self) -> Counter:
        """(layer type, runtime precision) -> count over the graph OpenVINO really executes."""
        ops: Counter = Counter()
        for node in self.compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
            if kind != "Const":
                ops[(kind, prec.lower())] += 1
        return ops

    def precisions(self) -> dict[str, int]:
        """Layer type -> count, for layers OpenVINO runs in 8-bit integers (its executed graph)."""
        ops: Counter = Counter()
        for (kind, prec), k in self.layer_precisions().items():
            if prec in ("i8", "u8"):
                ops[kind] += k
        return dict(sorted(ops.items()))


WEIGHTED = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")


def openvino_kernels(sessions: list) -> dict:
    """Whether OpenVINO ran the weighted layers (convolutions, fully connected) on integer kernels: counts by
    precision over the executed graphs of every segment, and one line saying it."""
    total: Counter = Counter()
    for s in sessions:
        total.update(s.layer_precisions())
    integer = {k: v for (k, p), v in total.items() if k in WEIGHTED and p in ("i8", "u8")}
    floats = {k: v for (k, p), v in total.items() if k in WEIGHTED and p not in ("i8", "u8")}
    n_int, n_float = sum(integer.values()), sum(floats.values())
    note = (f"all {n_int} convolution/fully-connected layers on integer kernels" if not n_float else
            f"{n_int} convolution/fully-connected layers on integer kernels, {n_float} in float ({floats})")
    return {"integer": not n_float and n_int > 0, "integer_layers": integer, "float_layers": floats, "note": note}


def open_session(path: str | Path, threads: int | None = None, spinning: bool = True, runtime: str = "ort"):
    return OpenVINOSession(path, threads) if runtime == "openvino" else session(path, threads, spinning=spinning)


def optimized_ops(paths: list[Path]) -> dict[str, int]:
    """Op types of the graphs ONNX Runtime really runs (after its fusions), summed over files."""
    ops: Counter = Counter()
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(paths):
            opt = Path(d) / f"opt{i}.onnx"
            session(p, 1, opt)
            ops.update(n.op_type for n in onnx.load(str(opt)).graph.node)
    return dict(sorted(ops.items()))


def _score(logits: np.ndarray, criterion: str) -> np.ndarray:
    """Same as exits.rules.score, in numpy so the driver needs no PyTorch."""
    z = logits.astype(np.float32)
    if criterion == "maxlogit":
        return np.abs(z).max(-1)
    e = np.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    if criterion == "confidence":
        return p.max(-1)
    if criterion == "entropy":
        return (p * np.log(np.maximum(p, 1e-12))).sum(-1)
    raise ValueError(f"unknown exit criterion '{criterion}'")


class ExitRunner:
    """Runs the exported segments of an exit network in turn until the exit rule fires.

    Batch size 1: the later segments never run for an input that left. Batch > 1: each segment runs
    only on the rows still pending (a mask), so work shrinks with every exit; rows keep their order.
    Returns (logits, exit index per row; the final head is index len(segments)-1).
    """

    def __init__(self, files: list[Path], rule: dict, threads: int | None = None, spinning: bool = True,
                 runtime: str = "ort"):
        self.sessions = [open_session(f, threads, spinning, runtime) for f in files]
        self.rule = rule

    def fires(self, logits: np.ndarray, k: int) -> np.ndarray:
        t = self.rule["threshold"]
        t = t[k] if isinstance(t, (list, tuple)) else t
        s = _score(logits, self.rule["criterion"])
        return (-s <= t) if self.rule["criterion"] == "entropy" else (s >= t)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last = len(self.sessions) - 1
        n, out = x.shape[0], None
        idx = np.full(n, last, np.int64)
        rows, feats = np.arange(n), x
        for k, s in enumerate(self.sessions):
            res = s.run(None, {"input": feats})
            logits = res[-1]
            if out is None:
                out = np.empty((n, *logits.shape[1:]), np.float32)
            if k == last:
                out[rows] = logits
                break
            rows, feats = self.step(res, rows, k, out, idx)
            if rows.size == 0:
                break
        return out, idx

    def step(self, res: list[np.ndarray], rows: np.ndarray, k: int, out: np.ndarray, idx: np.ndarray) -> tuple:
        """The driver's own work after exit k: rows whose rule fires leave with their logits (written into out
        and idx); the rest go on with their features (exitplan times this as the driver's cost)."""
        logits = res[-1]
        fire = self.fires(logits, k)
        out[rows[fire]], idx[rows[fire]] = logits[fire], k
        return rows[~fire], np.ascontiguousarray(res[0][~fire])

    def all_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        outs, feats = [], x
        for s in self.sessions:
            res = s.run(None, {"input": feats})
            outs.append(res[-1])
            feats = res[0]
        return outs


class Deployed:
    """An exported model ready to run: one session, or an ExitRunner over segments; runtime 'ort' (ONNX
    Runtime) or 'openvino'."""

    def __init__(self, folder: Path, manifest: dict, threads: int | None = None, spinning: bool = True,
                 runtime: str = "ort"):
        self.manifest = manifest
        self.files = [folder / f for f in manifest["files"]]
        if manifest.get("exit_rule"):
            self.runner = ExitRunner(self.files, manifest["exit_rule"], threads, spinning, runtime)
        else:
            self.sess = open_session(self.files[0], threads, spinning, runtime)
            self.runner = None

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.runner:
            return self.runner(x)
        return self.sess.run(["logits"], {"input": x})[0], None

    def all_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        return self.runner.all_outputs(x) if self.runner else [self(x)[0]]


def ort_metric(deployed: Deployed, data, batch_size: int = 256) -> float:
    from ..train import metric_of

    preds, ys = [], []
    for x, y in data.test.batches(batch_size):
        preds.append(torch.from_numpy(deployed(np.ascontiguousarray(x.numpy(), np.float32))[0]))
        ys.append(y)
    return metric_of(data, preds, ys)
