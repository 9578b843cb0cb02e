"""Lowering modules to ONNX nodes, written node by node (onnx.helper), not traced: a quantized layer must
keep its exact integer codes. A QuantConv2d becomes
    [Clip(lo*s_a, hi*s_a)] -> QuantizeLinear(s_a; uint8, zp 0 or 128 if signed)
        -> ConvInteger(int8 codes = integer_weight()) -> Cast -> Mul(s_a*s_w*bn) -> Add(bias, bn)
which is PyTorch's fake-quantized arithmetic up to float rounding (the 'exact' graph that `int8.Int8Pass`
rewrites for speed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.fx import GraphModule

from ..errors import UserError
from ..exits.heads import BagOfFeaturesHead
from ..models import classification as zoo
from ..qmodules import QuantConv2d, QuantLinear, act_range

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
        self.linear_rank: dict[str, int] = {}   # quantized linear layer -> rank of its input
        self.gemm: list[str] = []               # linear layers written as DQ -> Gemm (qdq.to_qdq; QGemm in ORT)
        self.portable = False                   # int8 weight codes everywhere (targets.choose_weights)

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


def may_saturate(m: nn.Module, q: np.ndarray) -> bool:
    """Whether uint8 x int8 kernels could get this layer wrong on x86 CPUs without VNNI (AVX2, AVX-512F):
    there ONNX Runtime (MLAS vpmaddubsw) adds two adjacent products in int16, saturating at 32767, so an
    8-bit input code near 255 times weight codes beyond 64 gives wrong sums (what broke the export check
    on an AMD EPYC with AVX2 only, whatever the ORT version). uint8 x uint8 kernels widen first: exact."""
    hi = act_range(m.act_bits, bool(m.act_signed))[1] + (128 if bool(m.act_signed) else 0)
    return 2 * hi * int(np.abs(q.astype(np.int16)).max(initial=0)) > 32767


def code_multiplier(q: np.ndarray, in_hi: int = 255) -> np.ndarray:
    """Per output channel, the largest integer k the int8 weight codes q (out, ...) can be multiplied by
    (scale / k: the same products, an int32 bias k times finer) while pairs of input code x weight code
    stay within int16 (see may_saturate): |k q| <= 64 for input codes up to 255, up to 127 for codes up to
    in_hi = 15 (4-bit)."""
    room = min(127, 32767 // (2 * max(in_hi, 1)))
    return np.maximum(1, room // np.maximum(np.abs(q).reshape(q.shape[0], -1).max(1), 1))


def weight_init(g: Graph, name: str, m: nn.Module, q: np.ndarray) -> tuple[str, str]:
    """The layer's exact weight codes and their zero point: int8 (zero point 0), or uint8 codes + 128
    (zero point 128) where int8 could saturate (see may_saturate) unless the graph is portable; the codes are
    the same either way."""
    if not g.portable and may_saturate(m, q):
        return (g.init((q.astype(np.int16) + 128).astype(np.uint8), "", exact=f"{name}.weight_q"),
                g.init(np.array(128, np.uint8), f"{name}.w_zp"))
    return g.init(q.astype(np.int8), "", exact=f"{name}.weight_q"), g.init(np.array(0, np.int8), f"{name}.w_zp")


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
        w, wz = weight_init(g, name, m, q)
        acc = g.op("ConvInteger", [xq, w, zp, wz], name, **attrs)
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
        g.linear_rank[name] = v.t.dim()
        q, s = _codes(m)
        w, wz = weight_init(g, name, m, np.ascontiguousarray(q.T))   # (in, out) for MatMul
        acc = g.op("MatMulInteger", [xq, w, zp, wz], name)
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
    kh, kw = _uniform_windows(h, oh), _uniform_windows(w, ow)
    if kh is None or kw is None:
        raise Unsupported(f"{name} ({type(m).__name__} {h}x{w} -> {oh}x{ow}, windows of unequal size)")
    g.fixed_size = True
    op = "AveragePool" if isinstance(m, nn.AdaptiveAvgPool2d) else "MaxPool"
    return g.op(op, [v.name], name, kernel_shape=[kh[0], kw[0]], strides=[kh[1], kw[1]])


def _uniform_windows(size: int, out: int) -> tuple[int, int] | None:
    """(kernel, stride) of PyTorch's adaptive pooling windows [floor(i*size/out), ceil((i+1)*size/out)) when
    they are all equally wide and equally spaced (3 -> 2: kernel 2, stride 1), else None."""
    starts = [i * size // out for i in range(out)]
    widths = {-(-(i + 1) * size // out) - s for i, s in enumerate(starts)}
    steps = {b - a for a, b in zip(starts, starts[1:])} or {1}
    return (widths.pop(), steps.pop()) if len(widths) == 1 and len(steps) == 1 else None


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
        if isinstance(m, GraphModule):
            return lower_graph(g, name, m, v)
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


# ---------------------------------------------------------------- any traced block (models.imported)
# A user's model is cut into torch.fx GraphModules; their graph is walked node by node: modules go through
# `lower` above (quantized layers keep their integer codes, a conv read only by a BN is folded with it),
# functions and tensor methods map to ONNX ops below. Values PyTorch computes are kept beside the ONNX
# names (`Val.t`), so shape arithmetic (x.size(0), view(...)) is evaluated, never exported.

FN_OPS = {"add": "Add", "iadd": "Add", "add_": "Add", "mul": "Mul", "imul": "Mul", "mul_": "Mul", "sub": "Sub",
          "truediv": "Div", "div": "Div", "relu": "Relu", "relu_": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
          "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid"}
SHAPE_FNS = {"size", "getattr", "getitem", "dim"}
IDENTITY_FNS = {"contiguous", "dropout", "clone", "detach"}


def _fn_name(n) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _concrete(a, env):
    import torch.fx as fx
    if isinstance(a, fx.Node):
        x = env[a]
        return x.t.clone() if isinstance(x, Val) else x
    if isinstance(a, (list, tuple)):
        return type(a)(_concrete(b, env) for b in a)
    return a


def _operand(g: Graph, a, env, hint: str) -> str:
    import torch.fx as fx
    if isinstance(a, fx.Node) and isinstance(env[a], Val):
        return env[a].name
    return g.f32(np.asarray(_concrete(a, env), np.float32), f"{hint}.const")


def _lower_fn(g: Graph, name: str, n, env) -> Val | object:
    kind = _fn_name(n)
    args = [_concrete(a, env) for a in n.args]
    kwargs = {k: _concrete(v, env) for k, v in n.kwargs.items()}
    with torch.no_grad():
        ref = getattr(args[0], n.target)(*args[1:], **kwargs) if n.op == "call_method" else n.target(*args, **kwargs)
    if not isinstance(ref, torch.Tensor) or kind in SHAPE_FNS:
        if isinstance(ref, torch.Tensor):
            raise Unsupported(f"{name} ({kind} on a tensor in the traced graph)")
        return ref      # shapes and numbers: evaluated here, never exported
    x = env[n.args[0]] if n.args and n.args[0] in env else None
    hint = f"{name}.{n.name}"
    if kind in IDENTITY_FNS:
        return Val(x.name, ref)
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else (n.kwargs.get("min_val", args[1] if len(args) > 1 else -1.0),
                                                    n.kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
        return Val(g.op("Clip", [x.name, g.f32(lo, "lo"), g.f32(hi, "hi")], hint), ref)
    if kind in FN_OPS:
        op = FN_OPS[kind]
        if op in ("Add", "Mul", "Sub", "Div"):
            a, b = (n.args[0], n.args[1]) if len(n.args) > 1 else (n.args[0], n.kwargs.get("other"))
            return Val(g.op(op, [_operand(g, a, env, hint), _operand(g, b, env, hint)], hint), ref)
        attrs = {"alpha": 1 / 6, "beta": 0.5} if op == "HardSigmoid" else {}
        return Val(g.op(op, [x.name], hint, **attrs), ref)
    if kind == "silu":
        return Val(g.op("Mul", [x.name, g.op("Sigmoid", [x.name], hint)], hint), ref)
    if kind in ("cat", "concat"):
        parts = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        return Val(g.op("Concat", [env[p].name for p in parts], hint, axis=int(dim) % ref.dim()), ref)
    if kind in ("flatten", "view", "reshape"):
        if ref.dim() == 2 and x.t.dim() >= 2 and ref.shape[0] == x.t.shape[0]:
            return Val(g.op("Flatten", [x.name], hint, axis=1), ref)
        g.fixed_size = g.fixed_size or x.t.dim() == 4
        shape = g.init(np.array([0, *ref.shape[1:]], np.int64), f"{hint}.shape")
        return Val(g.op("Reshape", [x.name, shape], hint), ref)
    if kind == "mean" and x.t.dim() == 4 and ref.dim() in (2, 4) and ref.shape[-1:] in ((1,), (x.t.shape[1],)) \
            and ref.numel() == x.t.shape[0] * x.t.shape[1]:
        y = g.op("GlobalAveragePool", [x.name], hint)
        return Val(y if ref.dim() == 4 else g.op("Flatten", [y], hint, axis=1), ref)
    pools = {"adaptive_avg_pool2d": lambda: nn.AdaptiveAvgPool2d(args[1]),
             "adaptive_max_pool2d": lambda: nn.AdaptiveMaxPool2d(args[1]),
             "avg_pool2d": lambda: nn.AvgPool2d(*args[1:], **kwargs),
             "max_pool2d": lambda: nn.MaxPool2d(*args[1:], **kwargs)}
    if kind in pools:
        return Val(_pool(g, hint, pools[kind](), x, ref), ref)
    raise Unsupported(f"{name} (operation '{kind}' of the traced graph has no ONNX lowering here)")


def lower_graph(g: Graph, name: str, gm, v: Val) -> Val:
    """A torch.fx GraphModule (one block or the head of an imported model), node by node."""
    env, folded = {}, set()
    prefix = f"{name}." if name else ""
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = v
        elif n.op == "get_attr":
            t = gm.get_parameter(n.target) if "." in n.target or hasattr(gm, n.target) else None
            env[n] = Val(g.f32(_np(t), f"{prefix}{n.target}"), t.detach())
        elif n.op == "call_module":
            if n in folded:
                continue
            m, x = gm.get_submodule(n.target), env[n.args[0]]
            users = list(n.users)
            bn = gm.get_submodule(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            if isinstance(m, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
                env[n] = env[users[0]] = g.note(lower_conv(g, f"{prefix}{n.target}", m, x, bn))
                folded.add(users[0])
            else:
                env[n] = lower(g, f"{prefix}{n.target}", m, x)
        elif n.op in ("call_function", "call_method"):
            out = _lower_fn(g, name, n, env)
            env[n] = g.note(out) if isinstance(out, Val) else out
        elif n.op == "output":
            return env[n.args[0]]
    raise Unsupported(f"{name} (a traced graph without output)")
