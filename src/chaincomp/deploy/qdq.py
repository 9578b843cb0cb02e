"""The Q/DQ form (QuantizeLinear/DequantizeLinear around float operators), what TensorRT, OpenVINO and
Qualcomm's tools read and what Brevitas, NNCF, ModelOpt and ORT's own quantizer write. Why apart from
int8.py: that pass writes ORT's QOperator ops (QLinearConv...) itself; this one rewrites the same exact
lowered graph into the portable form and leaves the fusion to the runtime.

A quantized conv  QuantizeLinear(s_a) -> ConvInteger -> Cast -> Mul -> Add  becomes
    QuantizeLinear(s_a) [-> Clip on codes, below 8 bits] -> DequantizeLinear(s_a)
    -> Conv(DequantizeLinear(int8 codes, per-channel s_w, axis 0), DequantizeLinear(int32 bias, s_a*s_w))
with the model's exact integer weight codes (BN folded into s_w; a negative folded scale negates the
channel's codes; codes times k with scale / k where they have room, for a k times finer int32 bias, as
Int8Pass does; uint8 + 128 where uint8 x int8 kernels could saturate, lowering.may_saturate). The QAT
activation scales are the QuantizeLinear scales already in the graph; the clip of a layer below 8 bits
moves after QuantizeLinear, onto the codes (clamp(round(v/s)) either way), so a runtime sees
DQ -> Conv -> Q and can fuse it. Linear layers: DQ -> MatMul -> Add. Values PyTorch keeps in float stay
float (no calibrated scales): a runtime runs those convs in float, exactly as PyTorch.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from .lowering import Graph, code_multiplier


def from_qop(g: Graph) -> None:
    """Rewrite the int8 pass's QOperator ops (Int8Pass) into Q/DQ, in place: QLinearConv becomes
    DQ(x) -> Conv(DQ(codes, per-channel s_w, axis 0), DQ(int32 bias, s_x*s_w)) -> Q(s_y), QLinearAdd
    DQ, DQ -> Add -> Q, the quantized pools DQ -> pool -> Q. Everything else the pass decided stays: 8-bit
    codes between layers (ReLU, MaxPool, Flatten on codes), codes handed between exit segments, the
    scales it calibrated. ONNX Runtime fuses each group back into the very QLinear op (so the same
    kernels run), and a runtime without them reads standard ONNX."""
    a, out = g.arrays, []

    def op(op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        name = output or g._name(f"{hint}/{op_type}")
        out.append(helper.make_node(op_type, inputs, [name], name=g._name(f"{hint}/{op_type}"), **attrs))
        return name

    def dq(x: str, s: str, zp: str, hint: str, **attrs) -> str:
        return op("DequantizeLinear", [x, s, zp], hint, **attrs)

    for n in g.nodes:
        hint, attrs = n.output[0].split("/")[0], {at.name: helper.get_attribute_value(at) for at in n.attribute}
        if n.op_type == "QLinearConv":
            x, sx, zx, w, sw, zw, sy, zy, *b = n.input
            c = a[w].shape[0]
            ws = np.broadcast_to(a[sw].astype(np.float32), (c,))
            wz = g.init(np.full(c, int(a[zw].reshape(-1)[0]), a[zw].dtype), f"{hint}.w_zp")
            ins = [dq(x, sx, zx, hint), dq(w, g.f32(ws, f"{hint}.w_scale"), wz, hint, axis=0)]
            if b:
                bs = (np.float32(a[sx]) * ws).astype(np.float32)
                ins.append(dq(b[0], g.init(bs, f"{hint}.b_scale"), g.init(np.zeros(c, np.int32), f"{hint}.b_zp"),
                              hint, axis=0))
            op("QuantizeLinear", [op("Conv", ins, hint, **attrs), sy, zy], hint, output=n.output[0])
        elif n.op_type == "QLinearAdd":
            xa, sa, za, xb, sb, zb, sy, zy = n.input
            y = op("Add", [dq(xa, sa, za, hint), dq(xb, sb, zb, hint)], hint)
            op("QuantizeLinear", [y, sy, zy], hint, output=n.output[0])
        elif n.op_type in ("QLinearGlobalAveragePool", "QLinearAveragePool"):
            x, sx, zx, sy, zy = n.input
            attrs.pop("channels_last", None)
            y = op(n.op_type[len("QLinear"):], [dq(x, sx, zx, hint)], hint, **attrs)
            op("QuantizeLinear", [y, sy, zy], hint, output=n.output[0])
        else:
            out.append(n)
    g.nodes = out


def to_qdq(g: Graph, trt: bool = False) -> dict[str, list[int]]:
    """Rewrite g in place; returns the per-channel code multipliers of layers that have them. trt: TensorRT's
    explicit-quantization form: the clip of a layer below 8 bits stays in float before its quantizer, float
    biases, the model's very codes (no multiplier: it only serves an int32 bias), no requantizing Q -> DQ
    after a conv (TensorRT fuses DQ -> Conv -> ReLU -> Q itself)."""
    a = g.arrays
    cons: dict[str, list] = {}
    for n in g.nodes:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out, skip, multipliers, convs = [], set(), {}, set()
    float_bias: dict[str, str] = {}  # conv output -> its float bias, for a conv ORT runs in float

    def op(op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        name = output or g._name(f"{hint}/{op_type}")
        out.append(helper.make_node(op_type, inputs, [name], name=g._name(f"{hint}/{op_type}"), **attrs))
        return name

    def chain(n) -> list | None:
        c = [n]
        for want in ("Cast", "Mul", "Add"):
            nxt = cons.get(c[-1].output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != want:
                return None
            c.append(nxt[0])
        return c

    for n in g.nodes:
        if id(n) in skip:
            continue
        if not trt and n.op_type == "Clip" and len(cons.get(n.output[0], [])) == 1 and \
                cons[n.output[0]][0].op_type == "QuantizeLinear" and n.input[1] in a:
            q = cons[n.output[0]][0]  # the clip of a layer below 8 bits: on the codes, after the quantizer
            s, zp = float(a[q.input[1]]), int(a[q.input[2]])
            lo, hi = (int(np.round(float(a[n.input[k]]) / s)) + zp for k in (1, 2))
            codes = op("QuantizeLinear", [n.input[0], *q.input[1:]], n.name.split("/")[0])
            op("Clip", [codes, g.init(np.array(max(lo, 0), np.uint8), "lo"), g.init(np.array(min(hi, 255), np.uint8),
                                                                                   "hi")], "clip", output=q.output[0])
            skip.add(id(q))
            continue
        c = chain(n) if n.op_type in ("ConvInteger", "MatMulInteger") else None
        if c is None:
            out.append(n)
            continue
        skip |= {id(x) for x in c}
        xq, w, xzp, wz_name = n.input
        layer = w.rsplit(".weight_q", 1)[0]
        sx = float(a[g.scales[xq]])
        mult = a[c[2].input[1]].reshape(-1).astype(np.float64)
        b = a[c[3].input[1]].reshape(-1).astype(np.float64)
        xdq = op("DequantizeLinear", [xq, g.scales[xq], xzp], layer)
        wz = int(a[wz_name])
        if n.op_type == "MatMulInteger":  # (in, out) codes, per-column scale
            wdq = op("DequantizeLinear", [w, g.f32(mult / sx, f"{layer}.w_scale"),
                                          g.init(np.full(mult.size, wz, a[wz_name].dtype), f"{layer}.w_zp")],
                     layer, axis=1)
            bs = (np.float32(sx) * (mult / sx).astype(np.float32)).astype(np.float32)
            bias = np.round(b / np.maximum(bs.astype(np.float64), 1e-30))
            if not trt and g.linear_rank.get(layer) == 2 and np.abs(bias).max(initial=0) < 2 ** 31:
                # Gemm with an int32 bias at s_x * s_w: ORT fuses DQ, DQ, DQ -> Gemm into QGemm (float out)
                bdq = op("DequantizeLinear", [g.init(bias.astype(np.int32), f"{layer}.bias_int32"),
                                              g.init(bs, f"{layer}.b_scale"),
                                              g.init(np.zeros(bs.size, np.int32), f"{layer}.b_zp")], layer, axis=0)
                op("Gemm", [xdq, wdq, bdq], layer, output=c[3].output[0])
                g.gemm.append(layer)
                continue
            y = op("MatMul", [xdq, wdq], layer)
            op("Add", [y, c[3].input[1]], layer, output=c[3].output[0])
            continue
        q = a[w].astype(np.int16) - wz
        k = code_multiplier(q) if wz == 0 and not trt else \
            np.ones(q.shape[0], np.int64)
        sign = np.where(mult < 0, -1, 1)
        sw = np.abs(mult) / sx / k
        wname = f"{layer}.weight_q"
        a[wname] = (q * (sign * k).reshape(-1, 1, 1, 1) + wz).astype(a[w].dtype)
        if (k > 1).any():
            multipliers[layer] = k.tolist()
        wdq = op("DequantizeLinear", [wname, g.f32(sw, f"{layer}.w_scale"),
                                      g.init(np.full(sw.size, wz, a[wz_name].dtype), f"{layer}.w_zp")], layer, axis=0)
        bs = (np.float32(sx) * sw.astype(np.float32)).astype(np.float32)
        bias = np.round(b / np.maximum(bs.astype(np.float64), 1e-30))
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        if trt:
            op("Conv", [xdq, wdq, g.f32(b, f"{layer}.bias")], layer, output=c[3].output[0], **attrs)
        elif (sw > 0).all() and np.abs(bias).max() < 2 ** 31:
            bdq = op("DequantizeLinear", [g.init(bias.astype(np.int32), f"{layer}.bias_int32"), g.init(bs, f"{layer}.b_scale"),
                                          g.init(np.zeros(sw.size, np.int32), f"{layer}.b_zp")], layer, axis=0)
            convs.add(op("Conv", [xdq, wdq, bdq], layer, output=c[3].output[0], **attrs))
            float_bias[c[3].output[0]] = g.f32(b, f"{layer}.bias")
        else:  # a dead channel or a bias beyond int32: float bias
            y = op("Conv", [xdq, wdq], layer, **attrs)
            op("Add", [y, c[3].input[1]], layer, output=c[3].output[0])
    g.nodes = out if trt else _requantize_outputs(g, out, convs, float_bias)
    return multipliers


def int8_activations(g: Graph) -> list[str]:
    """TensorRT reads int8 Q/DQ with zero point 0 only: rewrite each activation QuantizeLinear (uint8) and the
    DequantizeLinear reading its codes. Zero point 128 (signed values) becomes int8 codes, exact; zero point 0
    too while the codes stay <= 127 (below 8 bits, said by the float Clip before it). 8-bit unsigned codes
    (0..255) cannot: they get scale 2s, one bit fewer than the model's (returned by value name; the export
    check measures what it costs)."""
    a = g.arrays
    prod = {o: n for n in g.nodes for o in n.output}
    readers: dict[str, list] = {}  # codes -> the DequantizeLinear nodes reading them
    for n in g.nodes:
        if n.op_type == "DequantizeLinear":
            readers.setdefault(n.input[0], []).append(n)
    halved, nodes = [], []
    for q in g.nodes:
        nodes.append(q)
        if q.op_type != "QuantizeLinear" or a[q.input[2]].dtype != np.uint8:
            continue
        s, zp, p = float(a[q.input[1]]), int(a[q.input[2]]), prod.get(q.input[0])
        clip = p is not None and p.op_type == "Clip" and len(p.input) > 2 and p.input[2] in a
        if zp == 0 and not (clip and round(float(a[p.input[2]]) / s) <= 127):
            # uint8 saturated negatives to 0 and codes at 255; int8 codes would go negative: clip in float first
            clipped = g._name(f"{q.output[0].split('/')[0]}/Clip")
            lo_hi = [g.f32(np.float32(0), "lo"), g.f32(np.float32(255 * s), "hi")]
            nodes.insert(-1, helper.make_node("Clip", [q.input[0], *lo_hi], [clipped], name=clipped))
            halved.append(q.input[0])
            q.input[0], s = clipped, s * 2
        elif zp not in (0, 128):
            raise ValueError(f"activation zero point {zp}: not a chaincomp quantizer")
        hint = q.output[0].split("/")[0]
        names = g.f32(np.float32(s), f"{hint}.scale"), g.init(np.array(0, np.int8), f"{hint}.zp")
        for n in [q, *readers.get(q.output[0], [])]:
            n.input[1], n.input[2] = names
    g.nodes = nodes
    return halved


CODE_OPS = ("Relu", "MaxPool", "Flatten")


def _requantize_outputs(g: Graph, nodes: list, convs: set[str], float_bias: dict[str, str]) -> list:
    """Put Q -> DQ right after a quantized conv (after its ReLU) when every consumer quantizes the value
    (through ReLU/MaxPool/Flatten) at one scale, so the runtime sees DQ -> Conv -> Q and fuses it: exact,
    since MaxPool commutes with rounding and requantizing grid values at the same scale changes nothing.
    Consumers at another scale (an exit head beside the backbone) get a copy of the conv and its path,
    rather than rounding twice. A conv whose output is also read in float (a residual add) runs as a float
    Conv in the runtime: it takes the float bias, not the int32 one rounded for the integer kernel."""
    cons: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    a = g.arrays
    extra: dict[int, list] = {}  # id of a node -> nodes to emit right after it
    renames: list[tuple] = []
    for conv in [n for n in nodes if n.op_type == "Conv" and n.output[0] in convs]:
        path, t = [], conv.output[0]
        while len(cons.get(t, [])) == 1 and cons[t][0].op_type in CODE_OPS:
            path.append(cons[t][0])
            t = path[-1].output[0]
        users = [u for u in cons.get(t, []) if u.op_type == "QuantizeLinear"]
        floats = len(users) < len(cons.get(t, []))  # a float consumer (features handed on) keeps the original
        groups: dict[tuple, list] = {}
        for u in users:
            groups.setdefault((float(a[u.input[1]]), int(a[u.input[2]])), []).append(u)
        layer = conv.output[0].split("/")[0]
        for k, (_, qs) in enumerate(groups.items()):
            s_name, zp_name = qs[0].input[1:3]
            chain = [conv, *path]
            if k or floats:  # a copy of the conv and its path for this group
                copy, src = [], None
                for n in chain:
                    c = helper.make_node(n.op_type, [src or i for i in n.input][:1] + list(n.input[1:]) if src else
                                         list(n.input), [g._name(f"{layer}/{n.op_type}")], name=g._name(layer))
                    c.attribute.extend(n.attribute)
                    copy.append(c)
                    src = c.output[0]
                for u in qs:
                    u.input[0] = src
            # Q -> DQ after the conv's ReLU (fused into the conv's requantization) or after the conv
            c = copy if k or floats else chain
            i = 1 if len(c) > 1 and c[1].op_type == "Relu" else 0
            y = c[i].output[0]
            q = helper.make_node("QuantizeLinear", [y + "~", s_name, zp_name], [g._name(f"{layer}/QuantizeLinear")],
                                 name=g._name(layer))
            dq = helper.make_node("DequantizeLinear", [q.output[0], s_name, zp_name], [y], name=g._name(layer))
            renames.append((c[i], y + "~"))
            if k or floats:
                extra.setdefault(id(chain[-1]), []).extend([*c[:i + 1], q, dq, *c[i + 1:]])
            else:
                extra.setdefault(id(c[i]), []).extend([q, dq])
        if floats or not users:  # (copies above keep the int32 bias their integer kernels need)
            conv.input[2] = float_bias[conv.output[0]]
    for n, new in renames:
        n.output[0] = new
    out = []
    for n in nodes:
        out.append(n)
        out.extend(extra.get(id(n), []))
    return out
