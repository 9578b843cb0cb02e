"""Export's --rounding: 'fast' carries 8-bit codes wherever an integer kernel runs (a residual stream on
QLinearAdd, the features between exit segments), 'faithful' only where PyTorch quantizes, and 'auto'
falls back from fast to faithful when the accuracy check fails. What is left between ORT and PyTorch
in the faithful form is the int32 bias of QLinearConv: codes differ only at near-ties."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from chaincomp.deploy.export import export_model, export_run
from chaincomp.deploy.runtime import optimized_ops
from chaincomp.models import build_model
from chaincomp.qmodules import QuantPlan, apply_quant, calibrate

sys.path.insert(0, str(Path(__file__).parent))
from test_export import _activation_codes, _onnx_codes, runs, tiny_digits  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="module")
def residual_w4a4():
    """A W4A4 ResNet-8 with random weights and BN statistics (no training: the export must hold for any
    weights), calibrated on its inputs."""
    torch.manual_seed(0)
    m = build_model("resnet8", num_classes=10, in_channels=3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(64, 3, 16, 16)
    apply_quant(m, QuantPlan(weight_bits=4, act_bits=4))
    calibrate(m, [x[:32]])
    return m.eval(), x


def _run(folder: Path, desc: dict, x: torch.Tensor) -> np.ndarray:
    s = ort.InferenceSession(str(folder / desc["files"][0]), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x.numpy()})[0]


def test_faithful_keeps_the_residual_stream_float(residual_w4a4, tmp_path):
    m, x = residual_w4a4
    with torch.no_grad():
        ref = m(x).numpy()
    diffs, ops = {}, {}
    for name, faithful in (("fast", False), ("faithful", True)):
        folder = tmp_path / name
        folder.mkdir()
        desc = export_model(m, x[:32], folder / "a.onnx", "qdq", faithful=faithful)
        diffs[name] = float(np.abs(_run(folder, desc, x) - ref).max())
        ops[name] = optimized_ops([folder / f for f in desc["files"]])
    assert ops["fast"].get("QLinearAdd", 0) == 3 and "QLinearAdd" not in ops["faithful"]  # 3 residual adds
    assert ops["faithful"].get("QLinearConv", 0) >= 3  # the convs whose output only the next conv quantizes
    assert diffs["faithful"] < diffs["fast"], diffs


def test_faithful_codes_differ_only_at_near_ties(residual_w4a4, tmp_path):
    """Given PyTorch's own input codes, the first QLinearConv writes PyTorch's output codes except where the
    float value lies within a hair of a rounding tie (the int32 bias at s_x * s_w / k), and rarely."""
    m, x = residual_w4a4
    desc = export_model(m, x[:32], tmp_path / "a.onnx", "qdq", faithful=True)
    ref, got = _activation_codes(m, x), _onnx_codes(tmp_path, desc["files"], x.numpy())
    block = m.blocks[1]
    conv, bn, nxt = block.conv1, block.bn1, block.conv2
    q, sw = conv.integer_weight()

    def exact(codes: np.ndarray) -> np.ndarray:  # the conv + BN + ReLU in float64, in steps of the next codes
        with torch.no_grad():
            acc = F.conv2d(torch.tensor(codes, dtype=torch.float64), q.double(), stride=conv.stride,
                           padding=conv.padding)
            g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double().reshape(1, -1, 1, 1)
            y = acc * float(conv.act_scale) * sw.double().reshape(1, -1, 1, 1) * g + \
                (bn.bias.double() - bn.running_mean.double() * g.reshape(-1)).reshape(1, -1, 1, 1)
            return (torch.relu(y) / float(nxt.act_scale)).numpy()

    assert np.array_equal(np.clip(np.round(exact(ref["blocks.1.conv1"])), 0, 15), ref["blocks.1.conv2"])
    y = exact(got["blocks.1.conv1"])  # from ORT's own input codes (a float stem may move one of them)
    moved = got["blocks.1.conv2"] != np.clip(np.round(y), 0, 15)
    assert 0 < moved.mean() < 0.002
    assert np.abs(y[moved] - np.floor(y[moved]) - 0.5).max() < 0.01  # only near-ties move


def test_export_run_rounding(runs, tmp_path, monkeypatch):
    """faithful hands float features between exit segments and says so; auto falls back to it when the fast
    form fails the check; a bad value is one line naming the option."""
    import chaincomp.deploy.export as ex
    from chaincomp.errors import UserError

    data, dirs = runs
    fast = export_run(dirs["full"], tmp_path / "f" / "m.onnx", data=data, rounding="fast", echo=lambda s: None)
    faithful = export_run(dirs["full"], tmp_path / "t" / "m.onnx", data=data, rounding="faithful", echo=lambda s: None)
    assert fast["kernels"]["rounding"] == "fast" and faithful["kernels"]["rounding"] == "faithful"
    assert all("input_codes" in s for s in fast["segments"][1:])
    assert not any("input_codes" in s for s in faithful["segments"])
    assert "only where PyTorch quantizes" in faithful["kernels"]["note"]

    real, calls = ex.check, []

    def failing_once(*a, **k):  # the fast form fails, the faithful one is checked for real
        calls.append(1)
        r = real(*a, **k)
        return r | {"passed": False} if len(calls) == 1 else r
    monkeypatch.setattr(ex, "check", failing_once)
    lines = []
    auto = export_run(dirs["full"], tmp_path / "a" / "m.onnx", data=data, echo=lines.append)
    assert len(calls) == 2 and auto["kernels"]["rounding"] == "faithful" and "fast_check" in auto["check"]
    assert any("--rounding faithful" in s for s in lines)
    with pytest.raises(UserError, match="--rounding"):
        export_run(dirs["full"], tmp_path / "b" / "m.onnx", data=data, rounding="exact-ish")


def test_tensorrt_file_is_int8_explicit_quantization(residual_w4a4, tmp_path):
    """--target tensorrt: TensorRT's explicit quantization (int8 Q/DQ pairs with zero point 0 only, int8
    weight codes, standard ops, float biases). Signed and below-8-bit activations keep the model's very
    codes; the 8-bit unsigned input of the 8-bit head cannot (int8 with zero point 0 holds 0..127): it runs
    at twice the scale, and the manifest names it."""
    import onnx
    from onnx import numpy_helper

    m, x = residual_w4a4
    with torch.no_grad():
        ref = m(x).numpy()
    desc = export_model(m, x[:32], tmp_path / "a.onnx", "qdq", target="tensorrt")
    model = onnx.load(str(tmp_path / "a.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = model.graph.node
    assert {n.op_type for n in nodes} <= {"QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "Clip", "Add",
                                          "GlobalAveragePool", "Flatten", "MatMul", "Identity"}
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), n.name
        if n.op_type == "QuantizeLinear":  # a Q/DQ pair: TensorRT reads the codes back at once
            assert {c.op_type for c in nodes if n.output[0] in c.input} == {"DequantizeLinear"}
    assert all(inits[n.input[0]].dtype == np.int8 for n in nodes  # weights: the model's int8 codes
               if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    assert desc["weights"]["form"] == "portable" and desc["kernels"]["tensorrt"]["halved"] == ["head.1"]
    out = _run(tmp_path, desc, x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95 and np.abs(out - ref).max() < 0.1
    so = ort.SessionOptions()  # without ORT's own int32-bias rewrite, only the halved head input departs
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    raw = ort.InferenceSession(str(tmp_path / "a.onnx"), so, providers=["CPUExecutionProvider"])
    assert np.abs(raw.run(None, {"input": x.numpy()})[0] - ref).max() < 0.05


def test_tensorrt_needs_the_qdq_form(residual_w4a4, tmp_path):
    from chaincomp.errors import UserError

    m, x = residual_w4a4
    for kernels, weights in (("int8", "auto"), ("qdq", "ort")):
        with pytest.raises(UserError, match="--target tensorrt"):
            export_model(m, x[:32], tmp_path / "a.onnx", kernels, weights=weights, target="tensorrt")
