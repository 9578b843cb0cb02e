"""One 3x3 convolution in ONNX Runtime, FP32 (Conv) against int8 (QLinearConv, u8 x s8), per channel
count at batch 64: how the runtime's speed depends on width, which the BitOps count does not see.
Shows why pruning to odd channel counts (9, 18, 36) saves BitOps but little time, and what the int8
kernels can give at all. Prints a markdown table; nothing is written.

    python benchmarks/deploy_kernels.py [--threads 1] [--runs 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from chaincomp.deploy.bench import _loadavg, cpu_name


def conv_model(c: int, hw: int, int8: bool) -> bytes:
    rng = np.random.default_rng(0)
    init = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    if int8:
        node = helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "s", "z", "b"], ["y"],
                                pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        inits = [init(np.float32(0.1), "s"), init(np.uint8(0), "z"),
                 init(rng.integers(-7, 8, (c, c, 3, 3)).astype(np.int8), "w"),
                 init(np.full(c, 0.01, np.float32), "ws"), init(np.zeros(c, np.int8), "wz"),
                 init(np.zeros(c, np.int32), "b")]
    else:
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        inits = [init(rng.standard_normal((c, c, 3, 3)).astype(np.float32), "w"), init(np.zeros(c, np.float32), "b")]
    t = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", t, ["b", c, hw, hw])],
                          [helper.make_tensor_value_info("y", t, ["b", c, hw, hw])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def median_ms(model: bytes, x: np.ndarray, threads: int, runs: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        s.run(None, {"x": x})
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {"x": x})
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, ONNX Runtime {ort.__version__}, {args.threads} thread(s), "
          f"batch 64, median of {args.runs}, load average {[round(v, 2) for v in _loadavg()]}")
    print("| channels in = out | map | FP32 ms | int8 ms | int8 GMAC/s | int8 vs FP32 |\n|---|---|---|---|---|---|")
    for c, hw in ((8, 32), (9, 32), (12, 32), (16, 32), (16, 16), (18, 16), (24, 16), (32, 16),
                  (32, 8), (36, 8), (40, 8), (48, 8), (64, 8)):
        x = np.random.default_rng(1).random((64, c, hw, hw))
        f32 = median_ms(conv_model(c, hw, False), x.astype(np.float32), args.threads, args.runs)
        i8 = median_ms(conv_model(c, hw, True), (x * 200).astype(np.uint8), args.threads, args.runs)
        gmac = 64 * hw * hw * c * c * 9 / i8 / 1e6
        print(f"| {c} | {hw}x{hw} | {f32:.3f} | {i8:.3f} | {gmac:.0f} | {f32 / i8:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
