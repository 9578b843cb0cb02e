"""Per-layer QLinearConv time of int8 ONNX files in ONNX Runtime (1 thread, batch 64, CIFAR-sized
input), from ORT's own profiler: shows which layers a compressed model spends its time in.

    python benchmarks/deploy_layer_profile.py RUN_DIR/bench/compressed.onnx RUN_DIR/bench/ort_int8.onnx
"""
import json, sys, os, collections, numpy as np, onnxruntime as ort, onnx
def prof(path, n=20, b=64):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.enable_profiling = True
    so.optimized_model_filepath = "/tmp/opt.onnx"
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    g = onnx.load("/tmp/opt.onnx").graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    wshape = {}
    for nd in g.node:
        if nd.op_type == "QLinearConv":
            wshape[nd.name] = inits.get(nd.input[3])
    x = np.random.rand(b, 3, 32, 32).astype(np.float32)
    for _ in range(n): s.run(None, {s.get_inputs()[0].name: x})
    f = s.end_profiling(); ev = json.load(open(f)); os.remove(f)
    t = collections.Counter()
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"]["op_name"] == "QLinearConv":
            t[e["name"][:-len("_kernel_time")]] += e["dur"]
    print(path)
    for k, d in t.items(): print(f"  {str(wshape.get(k)):22s} {d/n/1000:6.3f} ms")
for p in sys.argv[1:]: prof(p)
