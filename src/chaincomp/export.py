"""Export a run's model to ONNX that ONNX Runtime executes as it is: pruned models as the smaller plain
graph (BN folded), quantized layers on integer kernels, exit networks as one file per segment plus
a driver (deployed.ExitRunner) that stops at the first exit whose rule fires.

The graph is written node by node from the modules (onnx.helper), not traced, because a quantized
layer must keep its exact integer codes. A QuantConv2d is first lowered to
    [Clip(lo*s_a, hi*s_a)] -> QuantizeLinear(s_a; uint8, zp 0 or 128 if signed)
        -> ConvInteger(int8 codes = integer_weight()) -> Cast -> Mul(s_a*s_w*bn) -> Add(bias, bn)
which is PyTorch's fake-quantized arithmetic up to float rounding (kernels='exact'). ORT runs
ConvInteger and the float values between layers slowly, so by default (kernels='int8') Int8Pass
rewrites that graph so 8-bit codes flow from layer to layer: QLinearConv requantizing straight to
the codes the next layer uses, QLinearAdd for residual adds, ReLU/MaxPool on codes, one
DequantizeLinear per float consumer, and codes (channels-last, so ORT's own layout transposes
cancel) between exit segments. ORT has no kernel below 8 bits: lower bit widths are kept exactly in
8-bit containers and the manifest says the kernels are 8-bit. A float model whose module has no
lowering here goes through torch.onnx (TorchScript) instead.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from . import __version__
from .deployed import Deployed, optimized_ops, ort_metric
from .errors import UserError
from .exits.heads import BagOfFeaturesHead
from .exits.model import ExitNetwork
from .io import atomic_write_bytes
from .models import classification as zoo
from .qmodules import QUANT_TYPES, QuantConv2d, QuantLinear, act_range

OPSET, IR_VERSION = 17, 8
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool"}


class Unsupported(Exception):
    """A module this lowering does not know; the caller falls back to torch.onnx or names it."""


@dataclass
class Val:
    name: str          # ONNX value name
    t: torch.Tensor    # the same value computed by PyTorch (shapes for pooling, sanity)


class Graph:
    """Nodes and initializers of one ONNX graph, with unique names."""

    def __init__(self):
        self.nodes, self.arrays, self.n = [], {}, 0
        self.fused: dict[str, list[int]] = {}   # layer -> output channels whose codes were negated
        self.scales: dict[str, str] = {}        # activation codes -> their scale (kept through fusion)
        self.ranges: dict[str, tuple[float, float]] = {}  # float value -> (min, max) on the export sample
        self.shapes: dict[str, tuple] = {}
        self.fixed_size = False                 # a lowering valid only for the sample's height and width

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}#{self.n}"

    def init(self, arr, hint: str, exact: str | None = None) -> str:
        name = exact or self._name(hint)
        self.arrays[name] = np.asarray(arr)
        return name

    def initializers(self) -> list:
        used = {i for n in self.nodes for i in n.input}
        return [numpy_helper.from_array(a, k) for k, a in self.arrays.items() if k in used]

    def f32(self, arr, hint: str) -> str:
        return self.init(np.asarray(arr, dtype=np.float32), hint)

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self._name(f"{hint}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def note(self, v: Val) -> Val:
        """Remember the value's range: the int8 pass calibrates the few scales the model lacks on it."""
        if v.t.is_floating_point() and v.t.numel():
            self.ranges[v.name] = (float(v.t.min()), float(v.t.max()))
            self.shapes[v.name] = tuple(v.t.shape)
        return v


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _bn_fold(c: int, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    if bn is None:
        return np.ones(c), np.zeros(c)
    k = _np(bn.weight if bn.affine else torch.ones(c)) / np.sqrt(_np(bn.running_var) + bn.eps)
    beta = _np(bn.bias) if bn.affine else np.zeros(c)
    return k, beta - k * _np(bn.running_mean)


def _quant_input(g: Graph, name: str, m: nn.Module, x: str) -> tuple[str, str]:
    """Input fake-quantization of a chaincomp layer as real 8-bit codes: uint8 with zero point 0
    (unsigned) or 128 (signed: code + 128, an exact shift), so that every activation has one type,
    as ORT's QLinearConv (u8 in, u8 out) and its fast u8 x s8 kernels need."""
    signed, s = bool(m.act_signed), float(m.act_scale)
    lo, hi = act_range(m.act_bits, signed)
    if m.act_bits < 8:  # QuantizeLinear saturates at the 8-bit range only
        x = g.op("Clip", [x, g.f32(lo * s, "lo"), g.f32(hi * s, "hi")], name)
    zp = g.init(np.array(128 if signed else 0, np.uint8), f"{name}.x_zp")
    scale = g.f32(s, f"{name}.act_scale")
    xq = g.op("QuantizeLinear", [x, scale, zp], name)
    g.scales[xq] = scale
    return xq, zp


def _codes(m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    q, s = m.integer_weight()
    q = q.detach().cpu().numpy()
    if np.abs(q).max() > 127:
        raise UserError(f"export: {type(m).__name__} has weight codes beyond int8 ({m.weight_bits} bits)")
    return q.astype(np.int8), _np(s).reshape(-1)


def _scale_shift(g: Graph, name: str, y: str, mult: np.ndarray, add: np.ndarray, shape: tuple) -> str:
    y = g.op("Mul", [y, g.f32(mult.reshape(shape), f"{name}.scale")], name)
    return g.op("Add", [y, g.f32(add.reshape(shape), f"{name}.bias")], name)


def lower_conv(g: Graph, name: str, m: nn.Conv2d, v: Val, bn: nn.BatchNorm2d | None = None) -> Val:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise Unsupported(f"{name} ({type(m).__name__} with padding {m.padding!r}/{m.padding_mode})")
    c = m.out_channels
    k, shift = _bn_fold(c, bn)
    bias = k * (_np(m.bias) if m.bias is not None else np.zeros(c)) + shift
    attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride), dilations=list(m.dilation),
                 pads=[*m.padding, *m.padding], group=m.groups)
    with torch.no_grad():
        ref = m(v.t) if bn is None else bn(m(v.t))
    if isinstance(m, QuantConv2d):
        xq, zp = _quant_input(g, name, m, v.name)
        q, s = _codes(m)
        w = g.init(q, "", exact=f"{name}.weight_q")
        acc = g.op("ConvInteger", [xq, w, zp, g.init(np.array(0, np.int8), f"{name}.w_zp")], name, **attrs)
        y = g.op("Cast", [acc], name, to=TensorProto.FLOAT)
        return Val(_scale_shift(g, name, y, float(m.act_scale) * s * k, bias, (1, c, 1, 1)), ref)
    w = _np(m.weight) * k.reshape(-1, 1, 1, 1)
    return Val(g.op("Conv", [v.name, g.f32(w, f"{name}.weight"), g.f32(bias, f"{name}.bias")], name, **attrs), ref)


def lower_linear(g: Graph, name: str, m: nn.Linear, v: Val) -> Val:
    with torch.no_grad():
        ref = m(v.t)
    bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_features)
    if isinstance(m, QuantLinear):
        xq, zp = _quant_input(g, name, m, v.name)
        q, s = _codes(m)
        w = g.init(np.ascontiguousarray(q.T), "", exact=f"{name}.weight_q")   # (in, out) for MatMul
        acc = g.op("MatMulInteger", [xq, w, zp, g.init(np.array(0, np.int8), f"{name}.w_zp")], name)
        y = g.op("Cast", [acc], name, to=TensorProto.FLOAT)
        return Val(_scale_shift(g, name, y, float(m.act_scale) * s, bias, (-1,)), ref)
    w, b = g.f32(_np(m.weight), f"{name}.weight"), g.f32(bias, f"{name}.bias")
    if v.t.dim() == 2:
        return Val(g.op("Gemm", [v.name, w, b], name, transB=1), ref)
    y = g.op("MatMul", [v.name, g.f32(_np(m.weight).T, f"{name}.weightT")], name)
    return Val(g.op("Add", [y, b], name), ref)


def _pool(g: Graph, name: str, m: nn.Module, v: Val, ref: torch.Tensor) -> str:
    pair = lambda a: list(a) if isinstance(a, (tuple, list)) else [a, a]  # noqa: E731
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise Unsupported(f"{name} (MaxPool2d with return_indices)")
        p = pair(m.padding)
        return g.op("MaxPool", [v.name], name, kernel_shape=pair(m.kernel_size), strides=pair(m.stride),
                    pads=p + p, dilations=pair(m.dilation), ceil_mode=int(m.ceil_mode))
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override:
            raise Unsupported(f"{name} (AvgPool2d with divisor_override)")
        p = pair(m.padding)
        return g.op("AveragePool", [v.name], name, kernel_shape=pair(m.kernel_size), strides=pair(m.stride),
                    pads=p + p, ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))
    (h, w), (oh, ow) = v.t.shape[-2:], ref.shape[-2:]
    if (oh, ow) == (1, 1):
        return g.op("GlobalAveragePool" if isinstance(m, nn.AdaptiveAvgPool2d) else "GlobalMaxPool", [v.name], name)
    if h % oh or w % ow:
        raise Unsupported(f"{name} ({type(m).__name__} {h}x{w} -> {oh}x{ow}, not a whole kernel)")
    g.fixed_size = True
    op = "AveragePool" if isinstance(m, nn.AdaptiveAvgPool2d) else "MaxPool"
    return g.op(op, [v.name], name, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])


POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ACTS = {nn.ReLU: "Relu", nn.Tanh: "Tanh", nn.Sigmoid: "Sigmoid"}
LEAVES = {nn.Identity, nn.Dropout, nn.ReLU6, nn.BatchNorm2d, nn.Flatten, *ACTS, *POOLS}


def lower_seq(g: Graph, items: list[tuple[str, nn.Module]], v: Val) -> Val:
    """Modules in order; a Conv2d directly followed by BatchNorm2d becomes one folded convolution."""
    i = 0
    while i < len(items):
        name, m = items[i]
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            v, i = g.note(lower_conv(g, name, m, v, nxt)), i + 2
        else:
            v, i = lower(g, name, m, v), i + 1
    return v


def _children(name: str, m: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"{name}.{n}" if name else n, c) for n, c in m.named_children()]


def lower(g: Graph, name: str, m: nn.Module, v: Val) -> Val:
    """One module; raises Unsupported for a module whose forward this file does not know."""
    return g.note(_lower(g, name, m, v))


def _lower(g: Graph, name: str, m: nn.Module, v: Val) -> Val:
    t = type(m)
    with torch.no_grad():
        if isinstance(m, nn.Sequential) and t.forward is nn.Sequential.forward:
            return lower_seq(g, _children(name, m), v)
        if t is zoo.Sequential:
            return lower_seq(g, [*_children(f"{name}.blocks" if name else "blocks", m.blocks),
                                 (f"{name}.head" if name else "head", m.head)], v)
        if t is zoo.BasicBlock:
            out = lower_seq(g, [(f"{name}.conv1", m.conv1), (f"{name}.bn1", m.bn1), (f"{name}.relu1", m.relu1),
                                (f"{name}.conv2", m.conv2), (f"{name}.bn2", m.bn2)], v)
            sc = lower(g, f"{name}.shortcut", m.shortcut, v)
            y = g.op("Add", [out.name, sc.name], name)
            return Val(g.op("Relu", [y], name), m(v.t))
        if t is BagOfFeaturesHead:
            s = g.note(lower_conv(g, f"{name}.codebook", m.codebook, v))
            s = g.op("Tanh", [s.name], name)
            den = g.op("ReduceSum", [g.op("Abs", [s], name), g.init(np.array([1], np.int64), "axes")], name,
                       keepdims=1)
            s = g.op("Div", [s, g.op("Add", [den, g.f32(1e-6, "eps")], name)], name)
            st = m.act(m.codebook(v.t))
            st = st / (st.abs().sum(1, keepdim=True) + 1e-6)
            return lower_seq(g, [(f"{name}.pool", m.pool), (f"{name}.flatten", m.flatten), (f"{name}.fc1", m.fc1),
                                 (f"{name}.relu", m.relu), (f"{name}.fc2", m.fc2)], Val(s, st))
        if isinstance(m, nn.Conv2d) and t in (nn.Conv2d, QuantConv2d):
            return lower_conv(g, name, m, v)
        if isinstance(m, nn.Linear) and t in (nn.Linear, QuantLinear):
            return lower_linear(g, name, m, v)
        if t not in LEAVES:
            raise Unsupported(f"{name or 'model'} ({t.__name__})")
        ref = m(v.t.clone())  # in-place activations must not touch the reference of the input
        if t in (nn.Identity, nn.Dropout):
            return Val(v.name, ref)
        if t in ACTS:
            return Val(g.op(ACTS[t], [v.name], name), ref)
        if t is nn.ReLU6:
            return Val(g.op("Clip", [v.name, g.f32(0, "lo"), g.f32(6, "hi")], name), ref)
        if t is nn.BatchNorm2d:
            k, shift = _bn_fold(m.num_features, m)
            return Val(_scale_shift(g, name, v.name, k, shift, (1, -1, 1, 1)), ref)
        if t is nn.Flatten and m.end_dim in (-1, v.t.dim() - 1):
            return Val(g.op("Flatten", [v.name], name, axis=m.start_dim % v.t.dim()), ref)
        if t in POOLS:
            return Val(_pool(g, name, m, v, ref), ref)
    raise Unsupported(f"{name or 'model'} ({t.__name__} with these settings)")


class Segment(nn.Module):
    """Blocks then one head: a whole plain model, or one stretch of an exit network ending in an exit
    head (then it also returns the features the next segment starts from)."""

    def __init__(self, items: list[tuple[str, nn.Module]], head: tuple[str, nn.Module], features: bool):
        super().__init__()
        self.names = [n for n, _ in items] + [head[0]]
        self.blocks = nn.ModuleList([m for _, m in items])
        self.head = head[1]
        self.features = features

    def forward(self, x: torch.Tensor):
        for b in self.blocks:
            x = b(x)
        return (x, self.head(x)) if self.features else self.head(x)


def segments_of(model: nn.Module) -> list[tuple[Segment, dict]]:
    """The exported pieces of a model: one for a plain model, one per exit (plus the final) otherwise."""
    if not isinstance(model, ExitNetwork):
        if hasattr(model, "blocks") and hasattr(model, "head") and type(model).forward is zoo.Sequential.forward:
            items = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
            return [(Segment(items, ("head", model.head), False), {"output": "final"})]
        return [(model, {"output": "final"})]
    segs, start = [], 0
    for p in model.exit_points + [len(model.blocks) - 1]:
        items = [(f"blocks.{i}", model.blocks[i]) for i in range(start, p + 1)]
        last = p == len(model.blocks) - 1
        head = ("head", model.head) if last else (f"exits.{p}", model.exits[str(p)])
        info = {"blocks": [start, p], "output": "final" if last else f"exit {p}"}
        segs.append((Segment(items, head, not last), info))
        start = p + 1
    return segs


KERNELS = ("int8", "exact")


def _graph_of(module: nn.Module, sample: torch.Tensor, kernels: str = "int8", input_codes: Codes | None = None,
              next_use: QUse | None = None) -> tuple[onnx.ModelProto, dict]:
    g = Graph()
    x = g.note(Val("input", sample))
    if isinstance(module, Segment):
        for n, b in zip(module.names, module.blocks):
            x = lower(g, n, b, x)
        outs = [("features", x), ("logits", lower(g, module.names[-1], module.head, x))] if module.features \
            else [("logits", lower(g, module.names[-1], module.head, x))]
    else:
        outs = [("logits", lower(g, "", module, x))]
    for out_name, v in outs:  # name the graph outputs
        g.nodes.append(helper.make_node("Identity", [v.name], [out_name], name=f"out/{out_name}"))
    p = Int8Pass(g, input_codes, next_use) if kernels == "int8" else None
    calibrated = p.run() if p else []
    codes = {"input": input_codes is not None, "features": p is not None and p.features is not None}
    # Height and width stay free unless a lowering depends on them (an adaptive pool to k x k).
    dims = (lambda t: ["batch", *t.shape[1:]]) if g.fixed_size or sample.dim() != 4 else \
        (lambda t: ["batch", t.shape[1], *(["height", "width"] if t is sample else [None] * (t.dim() - 2))])

    def value(n: str, t: torch.Tensor):  # segment boundaries carry uint8 codes, channels-last
        d = dims(t)
        return helper.make_tensor_value_info(n, TensorProto.UINT8, [d[0], *d[2:], d[1]]) if codes.get(n) else \
            helper.make_tensor_value_info(n, TensorProto.FLOAT, d)
    graph = helper.make_graph(g.nodes, "chaincomp", [value("input", sample)], [value(n, v.t) for n, v in outs],
                              g.initializers())
    ms = [helper.make_opsetid("com.microsoft", 1)] if any(n.domain == "com.microsoft" for n in g.nodes) else []
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), *ms], ir_version=IR_VERSION,
                             producer_name="chaincomp", producer_version=__version__), \
        {"fused": g.fused, "calibrated": calibrated, "features": p.features if p else None}


def _torch_export(module: nn.Module, sample: torch.Tensor, path: Path, why: str) -> None:
    """Float modules this file does not lower: trace with torch.onnx; a failure names the operator."""
    import io
    import warnings

    features = isinstance(module, Segment) and module.features
    names = ["features", "logits"] if features else ["logits"]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (sample,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                              output_names=names, dynamic_axes={n: {0: "batch"} for n in ["input", *names]})
    except Exception as e:  # noqa: BLE001 - any exporter failure is the model's operator, told in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"export: ONNX cannot take module {why}: {first}") from None
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, IR_VERSION)
    atomic_write_bytes(path, m.SerializeToString())


def write_onnx(module: nn.Module, sample: torch.Tensor, path: Path, kernels: str = "int8",
               input_codes: Codes | None = None, next_use: QUse | None = None) -> tuple[str, dict]:
    """Write one piece; returns how ('chaincomp' lowering or 'torch.onnx' for unknown float modules)
    and what the int8 pass did: layers on QLinearConv (with their negated channels), values given a
    calibrated scale."""
    module.eval()
    try:
        model, done = _graph_of(module, sample, kernels, input_codes, next_use)
    except Unsupported as e:
        if any(isinstance(m, QUANT_TYPES) for m in module.modules()):
            raise UserError(f"export: no integer lowering for module {e}; quantized models must use zoo "
                            "layers (conv, linear, BN, ReLU, pooling)") from None
        _torch_export(module, sample, path, str(e))
        return "torch.onnx", {"fused": {}, "calibrated": [], "features": None}
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())  # temp file, fsync, rename: never half a graph
    return "chaincomp", done


def quant_layers(model: nn.Module) -> dict[str, dict]:
    return {n: {"weight_bits": m.weight_bits, "act_bits": m.act_bits, "act_signed": bool(m.act_signed),
                "op": "ConvInteger" if isinstance(m, QuantConv2d) else "MatMulInteger"}
            for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def kernel_note(layers: dict[str, dict], kernels: str = "int8") -> dict:
    """What the recipe asked for versus what the runtime computes with (layers carry their op)."""
    if not layers:
        return {"kind": "fp32", "kernel_bits": 32, "note": "float model: FP32 kernels"}
    pairs = sorted({(v["weight_bits"], v["act_bits"]) for v in layers.values()})
    asked = ", ".join(f"W{w}A{a}" for w, a in pairs)
    n = Counter(v["op"] for v in layers.values())
    fused = n["QLinearConv"]
    ops = ", ".join(f"{k} {what}" for k, what in ((fused, "conv layers on QLinearConv"),
                                                   (n["ConvInteger"], "conv layers on ConvInteger"),
                                                   (n["MatMulInteger"], "linear layers on MatMulInteger")) if k)
    ops += " (int32 accumulation; ConvInteger/MatMulInteger with a float rescale)"
    if kernels == "int8":
        ops += "; 8-bit codes flow between layers (ReLU, MaxPool, residual QLinearAdd, pools on codes)"
    low = any(w < 8 or a < 8 for w, a in pairs)
    bits = (f"recipe bits {asked}; ONNX Runtime has no kernels below 8 bits, so the values are kept exactly "
            "in 8-bit containers and run on 8-bit kernels: bits below 8 bring no extra speed here" if low
            else f"recipe bits {asked}")
    return {"kind": "int8", "kernel_bits": 8, "recipe_bits": [f"W{w}A{a}" for w, a in pairs], "mode": kernels,
            "qlinear_layers": fused, "note": f"{bits}. {ops}"}


@dataclass
class Codes:
    """uint8 codes standing for a float tensor: value = (code - zp) * scale."""
    name: str
    scale: float
    zp: int
    s_name: str = ""
    zp_name: str = ""


@dataclass
class QUse:
    """A consumer that quantizes a value to codes lo..hi (zero point zp); q is its QuantizeLinear,
    None for the next segment's first layer (the value leaves this graph as `features`)."""
    scale: float
    zp: int
    lo: int
    hi: int
    q: object = None


CODE_OPS = ("Relu", "MaxPool", "Flatten")  # act on codes as on values (ReLU: the zero point or a Clip)


def input_quant(module: nn.Module) -> QUse | None:
    """How the first layer of a segment quantizes its input, when that layer is a quantized conv."""
    blocks = getattr(module, "blocks", None)
    first = next((m for m in blocks[0].modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None) if blocks else None
    if not isinstance(first, QUANT_TYPES):
        return None
    signed = bool(first.act_signed)
    lo, hi = act_range(first.act_bits, signed)
    zp = 128 if signed else 0
    return QUse(float(first.act_scale), zp, lo + zp, hi + zp)


class Int8Pass:
    """Rewrites the exact graph (ConvInteger + float rescale per layer, float values between layers)
    so that 8-bit codes flow from layer to layer, as ORT's fast integer kernels need:

    - a quantized conv becomes QLinearConv requantizing straight to codes its consumers can use: the
      next layer's codes when every consumer quantizes alike (exact: the model's own codes); else
      codes of the backbone's next layer (the `features` leaving a segment, else the first consumer):
      its very codes at 8 bits, at 1/k of its scale (k odd, so requantizing to it is still exact)
      below 8 bits, and the other consumers (an exit head, a projection shortcut) requantize from
      them; else a scale calibrated on the export sample (a value PyTorch keeps in float before a
      residual add or a pooled head: listed in the manifest as calibrated_scales);
    - ReLU, MaxPool and Flatten run on the codes; a residual Add becomes QLinearAdd (com.microsoft,
      in every ORT build); an average pool a depthwise QLinearConv of ones (ORT's QLinearAveragePool
      is ~4x slower), a global one QLinearGlobalAveragePool;
    - a float consumer (tanh of a BoF head, the logits) gets its own DequantizeLinear, and a segment
      hands its features to the next as codes, so exits never take the backbone out of int8.
    QLinearConv needs positive weight scales: codes of channels with a negative folded BN scale flip
    sign (listed), and the bias is rounded to int32 at scale s_x * s_w. Two consumers whose scales
    differ by less than 0.01 of a code over the whole range share codes. Linear layers keep
    MatMulInteger with a float rescale (their outputs are logits or tiny)."""

    def __init__(self, g: Graph, input_codes: Codes | None = None, next_use: QUse | None = None):
        self.g, self.a, self.next_use = g, g.arrays, next_use
        self.cons: dict[str, list] = {}
        for n in g.nodes:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.prod = {o: n for n in g.nodes for o in n.output}
        self.rep: dict[str, Codes] = {}  # float tensor -> codes that stand for it
        self.gone: set[str] = set()      # float tensors no longer computed (their codes are)
        self.alias: dict[str, str] = {}  # code tensor -> the one that replaces it
        self.deq: dict[str, str] = {}    # float tensor recovered by one DequantizeLinear
        self.out: list = []
        self.skip: set[int] = set()
        self.calibrated: list[str] = []
        self.features: Codes | None = None  # codes this segment hands on
        if input_codes:  # codes arrive channels-last (see run)
            nchw = self.op("Transpose", ["input"], "input", perm=[0, 3, 1, 2])
            self.rep["input"] = self.named(Codes(nchw, input_codes.scale, input_codes.zp), "input")
            self.gone.add("input")

    def named(self, c: Codes, hint: str) -> Codes:
        """Codes with initializers for their scale and zero point."""
        if not c.s_name:
            c.s_name, c.zp_name = self.g.f32(c.scale, f"{hint}.scale"), self.g.init(np.array(c.zp, np.uint8),
                                                                                    f"{hint}.zp")
        return c

    def op(self, op_type: str, inputs: list[str], hint: str, domain: str | None = None, **attrs) -> str:
        out = self.g._name(f"{hint}/{op_type}")
        self.out.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def fix(self, name: str) -> str:
        """The name to read a value by: its replacing codes, or its float value (dequantized once)."""
        if name in self.alias:
            return self.alias[name]
        if name not in self.gone:
            return name
        if name not in self.deq:
            r = self.rep[name]
            self.deq[name] = self.op("DequantizeLinear", [r.name, r.s_name, r.zp_name], name.split("/")[0])
        return self.deq[name]

    def emit(self, n) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.input[:] = [self.fix(i) for i in n.input]
        self.out.append(new)

    def qview(self, q) -> tuple[str, QUse]:
        """(float source, use) of a QuantizeLinear, looking through the Clip before it."""
        x, s, zp = q.input[0], float(self.a[q.input[1]]), int(self.a[q.input[2]])
        p = self.prod.get(x)
        if p is not None and p.op_type == "Clip" and len(self.cons[x]) == 1 and p.input[1] in self.a:
            lo = max(0, int(np.round(float(self.a[p.input[1]]) / s)) + zp)
            return p.input[0], QUse(s, zp, lo, min(255, int(np.round(float(self.a[p.input[2]]) / s)) + zp), q)
        return x, QUse(s, zp, 0, 255, q)

    def uses(self, t: str) -> tuple[list[QUse], list]:
        """The consumers of t that quantize it (the backbone's first), and the others."""
        qs, others = [], []
        for c in self.cons.get(t, []):
            nxt = self.cons.get(c.output[0], [])
            if c.op_type == "Clip" and len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
                c = nxt[0]
            if c.op_type == "QuantizeLinear":
                qs.append(self.qview(c)[1])
            elif c.output[0] == "features" and self.next_use:
                qs.insert(0, self.next_use)
            else:
                others.append(c)
        return qs, others

    def follow(self, y: str) -> str:
        while len(self.cons.get(y, [])) == 1 and self.cons[y][0].op_type in CODE_OPS:
            y = self.cons[y][0].output[0]
        return y

    def choose(self, y: str) -> Codes | None:
        """Codes for the value y turns into through ReLU/MaxPool/Flatten (see the class doc)."""
        t = self.follow(y)
        qs, others = self.uses(t)
        r = self.g.ranges.get(t)
        first = qs[0] if qs else None
        if first and not others and all((u.scale, u.zp, u.lo, u.hi) == (first.scale, first.zp, first.lo, first.hi)
                                        for u in qs):
            return self.named(Codes("", first.scale, first.zp, *(first.q.input[1:3] if first.q else ())), t)
        first = next((u for u in qs if r is None or r[0] >= -(u.zp + 0.5) * u.scale), None)
        if first:  # k times finer codes around its zero point that still hold every consumer's range;
            # k odd keeps requantizing to the first one's codes exact (no value lands on a tie)
            need = [((u.lo - u.zp) * u.scale, (u.hi - u.zp) * u.scale) for u in qs] + ([r] if others and r else [])
            lo, hi = min(v[0] for v in need), max(v[1] for v in need)
            room = int(min(255, first.zp * first.scale / -lo if lo < 0 else 255,
                           (255 - first.zp) * first.scale / hi if hi > 0 else 255))
            k = max(1, room - (room + 1) % 2)
            names = first.q.input[1:3] if first.q and k == 1 else ()
            return self.named(Codes("", first.scale / k, first.zp, *names), t)
        if r is None:
            return None
        zp = 0 if r[0] >= 0 else 128
        self.calibrated.append(t)
        return self.named(Codes("", max(r[1] / (255 - zp), -r[0] / max(zp, 1), 1e-8), zp), t)

    def codes_of(self, t: str) -> Codes | None:
        """Codes of t for an integer op (a residual Add), quantizing a float value once if need be."""
        if t not in self.rep and t not in self.a:
            c = self.choose(t)  # a float value entering an integer op: quantize it once
            if c is None:
                return None
            c.name = self.op("QuantizeLinear", [self.fix(t), c.s_name, c.zp_name], t.split("/")[0])
            self.rep[t] = c
        return self.rep.get(t)

    def produce(self, y: str, c: Codes, node_out: str) -> None:
        self.rep[y] = Codes(node_out, c.scale, c.zp, c.s_name, c.zp_name)
        self.gone.add(y)

    def quantize(self, n) -> None:
        src, u = self.qview(n)
        r = self.rep.get(src)
        if r is None:
            self.emit(n)
            rng = self.g.ranges.get(src)
            if (u.lo, u.hi) == (0, 255) and src not in self.gone and (rng is None or rng[0] >= -(u.zp + .5) * u.scale):
                # other consumers (an identity shortcut, an exit head) share these codes
                self.rep[src] = Codes(n.output[0], u.scale, u.zp, n.input[1], n.input[2])
            return
        codes, hint = r.name, src.split("/")[0]
        if not (r.zp == u.zp and abs(r.scale / u.scale - 1) * 255 < 0.01):  # requantize from the shared codes
            codes = self.op("QuantizeLinear", [self.fix(src), n.input[1], n.input[2]], hint)
        if (u.lo, u.hi) != (0, 255):
            lo, hi = self.g.init(np.array(u.lo, np.uint8), "lo"), self.g.init(np.array(u.hi, np.uint8), "hi")
            codes = self.op("Clip", [codes, lo, hi], hint)
        self.alias[n.output[0]] = codes

    def conv(self, n) -> bool:
        chain = [n]
        for want in ("Cast", "Mul", "Add"):
            nxt = self.cons.get(chain[-1].output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != want:
                return False
            chain.append(nxt[0])
        a, y = self.a, chain[-1].output[0]
        sx_name = self.g.scales[n.input[0]]
        sx = float(a[sx_name])
        m = a[chain[2].input[1]].reshape(-1).astype(np.float64)
        b = a[chain[3].input[1]].reshape(-1).astype(np.float64)
        sign, sw = np.where(m < 0, -1, 1), np.abs(m) / sx
        bias = np.round(b / (sx * np.maximum(sw, 1e-30)))
        if not (sw > 0).all() or np.abs(bias).max() >= 2 ** 31:
            return False  # a dead channel or a bias beyond int32: keep the float rescale
        c = self.choose(y)
        if c is None:
            return False
        w = n.input[1]
        a[w] = (a[w].astype(np.int16) * sign.reshape(-1, 1, 1, 1)).astype(np.int8)
        layer = w.rsplit(".weight_q", 1)[0]
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        ins = [self.fix(n.input[0]), sx_name, n.input[2], w, self.g.f32(sw, f"{layer}.w_scale"), n.input[3],
               c.s_name, c.zp_name, self.g.init(bias.astype(np.int32), f"{layer}.bias_int32")]
        self.produce(y, c, self.op("QLinearConv", ins, layer, **attrs))
        self.skip |= {id(x) for x in chain}
        self.g.fused[layer] = np.flatnonzero(sign < 0).tolist()
        return True

    def on_codes(self, n) -> bool:
        """ReLU/MaxPool/Flatten/pools/Add on a value that only exists as codes; False: run it in float."""
        x, y, hint = n.input[0], n.output[0], n.name.rsplit("/", 1)[0]
        if n.op_type == "Add":
            if len(n.input) != 2 or not ({x, n.input[1]} & self.gone) or n.input[1] in self.a:
                return False
            c = self.choose(y)
            ca, cb = self.codes_of(x), self.codes_of(n.input[1])
            if c is None or ca is None or cb is None:
                return False
            ins = [ca.name, ca.s_name, ca.zp_name, cb.name, cb.s_name, cb.zp_name, c.s_name, c.zp_name]
            self.produce(y, c, self.op("QLinearAdd", ins, hint, domain="com.microsoft"))
            return True
        if x not in self.gone:
            return False
        r = self.rep[x]
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        if n.op_type == "Relu":
            out = r.name if r.zp == 0 else self.op("Clip", [r.name, r.zp_name, self.g.init(np.array(255, np.uint8),
                                                                                          "hi")], hint)
            self.produce(y, r, out)
        elif n.op_type in ("MaxPool", "Flatten"):
            self.produce(y, r, self.op(n.op_type, [r.name], hint, **attrs))
        elif n.op_type in ("GlobalAveragePool", "AveragePool"):
            c = self.choose(y)
            if c is None:
                return False
            ins = [r.name, r.s_name, r.zp_name, c.s_name, c.zp_name]
            ch = self.g.shapes.get(x, (0, 0))[1]
            if n.op_type == "GlobalAveragePool":
                self.produce(y, c, self.op("QLinearGlobalAveragePool", ins, hint, "com.microsoft", channels_last=0))
            elif any(attrs.get("pads", [0])) or attrs.get("ceil_mode") or not ch:
                self.produce(y, c, self.op("QLinearAveragePool", ins, hint, "com.microsoft", **attrs))
            else:  # as a depthwise QLinearConv of ones at scale 1/k: ~4x faster in ORT, channels-last too
                kh, kw = attrs["kernel_shape"]
                w = [self.g.init(np.ones((ch, 1, kh, kw), np.int8), f"{hint}.ones"),
                     self.g.f32(np.full(ch, 1 / (kh * kw)), f"{hint}.w_scale"),
                     self.g.init(np.zeros(ch, np.int8), f"{hint}.w_zp")]
                self.produce(y, c, self.op("QLinearConv", [*ins[:3], *w, *ins[3:]], hint, kernel_shape=[kh, kw],
                                           strides=attrs.get("strides", [1, 1]), group=ch))
        else:
            return False
        return True

    def run(self) -> list[str]:
        for n in self.g.nodes:
            if id(n) in self.skip:
                continue
            if n.op_type == "Clip" and n.input[0] in self.rep and all(
                    c.op_type == "QuantizeLinear" for c in self.cons.get(n.output[0], [])):
                continue  # the QuantizeLinear after it clips the codes
            if n.op_type == "QuantizeLinear":
                self.quantize(n)
            elif n.output[0] == "features" and self.next_use and n.input[0] in self.gone:
                # The next segment takes the codes channels-last: ORT runs integer convs channels-last,
                # so the Transposes at both ends of the boundary cancel against its own.
                self.features = self.rep[n.input[0]]
                self.out.append(helper.make_node("Transpose", [self.features.name], ["features"], name="out/features",
                                                 perm=[0, 2, 3, 1]))
            elif not ((n.op_type == "ConvInteger" and self.conv(n)) or
                      (n.op_type in (*CODE_OPS, "Add", "GlobalAveragePool", "AveragePool") and self.on_codes(n))):
                self.emit(n)
        self.g.nodes = self.out
        return self.calibrated


def calibration_input(data, n: int = 256) -> torch.Tensor:
    """The export sample: the first `n` training inputs (one when the split is not stacked). Besides
    fixing shapes, it calibrates the few int8 scales the model itself does not have."""
    return next(data.train.batches(n))[0]


def export_model(model: nn.Module, sample: torch.Tensor, path: str | Path, kernels: str = "int8") -> dict:
    """Write the model (or its segments) next to `path`; returns the manifest part that describes it.

    sample: real inputs (calibration_input), not zeros: the int8 pass takes the range of values the
    model does not quantize itself (before a residual add or a pooled head) from it.
    kernels: 'int8' 8-bit codes between layers, QLinearConv/QLinearAdd (see Int8Pass); 'exact'
    ConvInteger/MatMulInteger with a float rescale per layer, float values between layers: PyTorch's
    arithmetic up to float rounding, but slow in ORT."""
    if kernels not in KERNELS:
        raise UserError(f"--kernels: '{kernels}'; choose one of {', '.join(KERNELS)}")
    path = Path(path)
    segs = segments_of(model)
    files, pieces, fused, calibrated, codes = [], [], {}, [], None
    for k, (seg, info) in enumerate(segs):
        f = path if len(segs) == 1 else path.with_name(f"{path.stem}.seg{k}{path.suffix or '.onnx'}")
        with torch.no_grad():
            out = seg.eval()(sample)
        four_d = isinstance(out, tuple) and out[0].dim() == 4
        nxt = input_quant(segs[k + 1][0]) if k + 1 < len(segs) and four_d else None
        how, done = write_onnx(seg, sample, f, kernels, codes, nxt)
        if codes:
            info["input_codes"] = {"dtype": "uint8", "layout": "NHWC", "scale": codes.scale, "zero_point": codes.zp}
        codes = done["features"]
        fused |= done["fused"]
        calibrated += [c.split("/")[0] for c in done["calibrated"]]
        sample = out[0] if isinstance(out, tuple) else sample
        files.append(f.name)
        pieces.append({"file": f.name, "writer": how, **info})
    layers = quant_layers(model)
    for name, neg in fused.items():
        layers[name] |= {"op": "QLinearConv", "negated_channels": neg}
    is_exit = isinstance(model, ExitNetwork)
    kern = kernel_note(layers, kernels)
    if layers and kernels == "int8":
        kern["calibrated_scales"] = calibrated  # values PyTorch keeps in float, rounded to 8 bits here
    return {"kind": "exits" if is_exit else ("quantized" if layers else "plain"), "files": files, "segments": pieces,
            "exit_rule": dict(model.exit_rule) if is_exit else None, "layers": layers, "kernels": kern}


# ---------------------------------------------------------------- the export command

def check(model: nn.Module, data, deployed: Deployed, tolerance: float = 0.5) -> dict:
    """The exported model against PyTorch on the test split: metric of both, largest logit difference
    over every output, agreement of predictions (and of exit choices); passes within `tolerance`."""
    from .train import evaluate, predict

    res = evaluate(model, data, "test")
    onnx_metric = ort_metric(deployed, data)
    diff, agree, same_exit, n = 0.0, 0, 0, 0
    for (x, _), t_outs in zip(data.test.batches(256), predict(model, data.test)):
        xs = np.ascontiguousarray(x.numpy(), np.float32)
        for a, b in zip(deployed.all_outputs(xs), t_outs):
            diff = max(diff, float(np.abs(a - b.numpy()).max()))
        pred, idx = deployed(xs)
        if isinstance(model, ExitNetwork):
            from .exits.rules import choose_exits, gather_outputs
            chosen = choose_exits(t_outs, model.exit_rule["criterion"], model.exit_rule["threshold"])
            ref = gather_outputs(t_outs, chosen)
            same_exit += int((torch.from_numpy(idx) == chosen).sum())
        else:
            ref = t_outs[-1]
        if data.task == "classification":
            agree += int((torch.from_numpy(pred).argmax(-1) == ref.argmax(-1)).sum())
        n += x.shape[0]
    out = {"split": "test", "n": n, "metric_name": data.metric_name, "torch_metric": round(res.metric, 4),
           "onnx_metric": round(onnx_metric, 4), "tolerance": tolerance, "max_abs_diff": diff,
           "passed": abs(res.metric - onnx_metric) <= tolerance}
    if data.task == "classification":
        out["prediction_agreement"] = round(100 * agree / max(n, 1), 3)
    if isinstance(model, ExitNetwork):
        out["exit_agreement"] = round(100 * same_exit / max(n, 1), 3)
    return out


def manifest_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.manifest.json")


def strip_fmc(model: nn.Module) -> dict | None:
    """Remove feature-map codec hooks (fmc stage) from a loaded model. The codec models the DRAM traffic
    of a layer-by-layer accelerator: ORT on a CPU keeps maps in caches and has no such operator, and
    an exported graph silently without it would not be the run's model. So it is removed on purpose
    and said so (manifest `stripped`, one printed line); the check then compares with PyTorch
    without the codec too."""
    from .stages.fmc import find_hooks

    hooks = find_hooks(model)
    if hooks is None:
        return None
    points = list(hooks.points)
    hooks.remove()
    return {"fmc": points, "note": f"feature-map codec hooks at {len(points)} point(s) removed: ONNX Runtime has no "
                                   "such operator; the export and its check are of the model without them"}


def export_run(run_dir: str | Path, out: str | Path | None = None, stage: str | None = None, data=None,
               tolerance: float = 0.5, kernels: str = "int8", echo=print) -> dict:
    """`chaincomp export`: write the model of a run folder, check it in ORT, write the manifest. Writing
    into the run folder (the default RUN_DIR/export) takes its lock, as `run` and `bench` do."""
    from contextlib import nullcontext

    from .chain import load_run
    from .io import RunLock

    run = load_run(run_dir, stage, data=data)
    path = Path(out) if out else Path(run_dir) / "export" / "model.onnx"
    if path.suffix != ".onnx":
        raise UserError(f"--out: give a file name ending in .onnx (got {path.name})")
    inside = path.resolve().is_relative_to(Path(run_dir).resolve())
    with RunLock(run_dir) if inside else nullcontext():
        return _export(run, Path(run_dir), path, tolerance, kernels, echo)


def _export(run, run_dir: Path, path: Path, tolerance: float, kernels: str, echo) -> dict:
    from .io import write_json

    stripped = strip_fmc(run.model)
    if stripped:
        echo(f"note: {stripped['note']}")
    desc = export_model(run.model, calibration_input(run.data), path, kernels)
    files = [path.parent / f for f in desc["files"]]
    ops = optimized_ops(files)
    deployed = Deployed(path.parent, desc)
    result = check(run.model, run.data, deployed, tolerance)
    manifest = {"format": 1, "chaincomp": __version__, "run": str(run_dir.resolve()), "stage": run.stage,
                "opset": OPSET, "input": {"name": "input", "shape": ["batch", *run.data.sample_input().shape[1:]]},
                **desc, "ort_ops": ops, "integer_ops": {k: v for k, v in ops.items() if k in INTEGER_OPS},
                "batch": "dynamic; exit networks run each segment only on the rows still pending (ExitRunner)",
                "stripped": stripped, "check": result}
    write_json(manifest_path(path), manifest)
    k = desc["kernels"]
    echo(f"exported {run.stage} ({desc['kind']}) -> {', '.join(str(f) for f in files)}")
    echo(f"kernels: {k['note']}")
    echo("ORT optimized graph: " + ", ".join(f"{o} x{n}" for o, n in ops.items()))
    if desc["exit_rule"]:
        echo(f"exit rule: {desc['exit_rule']} (driver: chaincomp.deployed.ExitRunner)")
    extra = "".join(f", {key.replace('_', ' ')} {result[key]:.1f}%" for key in ("prediction_agreement",
                                                                                "exit_agreement") if key in result)
    echo(f"check on {result['n']} test samples: PyTorch {result['metric_name']} {result['torch_metric']:.2f}, "
         f"ONNX Runtime {result['onnx_metric']:.2f} (tolerance {tolerance}), max-abs output diff "
         f"{result['max_abs_diff']:.3g}{extra}")
    echo(f"manifest: {manifest_path(path)}")
    return manifest
