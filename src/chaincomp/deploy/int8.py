"""The int8 pass: rewrite the exact lowered graph so 8-bit codes flow from layer to layer (QLinearConv
requantizing straight to the codes the next layer uses, QLinearAdd for residual adds, ReLU/MaxPool on
codes), as ONNX Runtime's fast integer kernels need."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from torch import nn

from ..qmodules import QUANT_TYPES, act_range
from .lowering import Graph, code_multiplier

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
    MatMulInteger with a float rescale (their outputs are logits or tiny).

    faithful=True: codes only where they are the very codes a PyTorch quantizer makes (every consumer
    quantizes alike, or a conv writes each consumer's codes itself); a value PyTorch keeps in float and
    reads in float (a residual stream, the features an exit segment hands on, a value before a pooled
    head) stays float. Slower, but without the 8-bit rounding of residual streams that PyTorch's QAT
    model never does; what is left is float rounding and the int32 bias."""

    def __init__(self, g: Graph, input_codes: Codes | None = None, next_use: QUse | None = None,
                 faithful: bool = False):
        self.g, self.a, self.next_use, self.faithful = g, g.arrays, next_use, faithful
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
        self.multipliers: dict[str, list[int]] = {}  # layer -> per-channel factor of its stored codes
        self.copied: list[str] = []  # layers computed a second time for a consumer at another scale
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
        for i, j in zip(n.input, new.input):  # codes read under another name keep their scale (qdq.to_qdq)
            if i in self.g.scales and i != j:
                self.g.scales[j] = self.g.scales[i]
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

    def choose(self, y: str, copies: bool = False) -> Codes | None:
        """Codes for the value y turns into through ReLU/MaxPool/Flatten (see the class doc). copies: the
        producer writes every other consumer's codes itself (a conv: Int8Pass.copies)."""
        t = self.follow(y)
        qs, others = self.uses(t)
        r = self.g.ranges.get(t)
        first = qs[0] if qs else None
        if first and not others and all((u.scale, u.zp, u.lo, u.hi) == (first.scale, first.zp, first.lo, first.hi)
                                        for u in qs):
            return self.named(Codes("", first.scale, first.zp, *(first.q.input[1:3] if first.q else ())), t)
        if self.faithful and (others or not copies or not qs or any(u.q is None for u in qs)):
            return None  # shared codes would round what PyTorch reads in float (or at another scale)
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
            if (u.lo, u.hi) == (0, 255) and src not in self.gone and not self.faithful and \
                    (rng is None or rng[0] >= -(u.zp + .5) * u.scale):
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
        w = n.input[1]
        wz = int(a[n.input[3]])  # 128: uint8 codes + 128 (lowering.may_saturate)
        q = a[w].astype(np.int16) - wz
        # Codes times an integer k (scale / k) where they have room (lowering.code_multiplier): the int32 bias
        # k times finer, which matters for low-bit layers whose s_x * s_w is coarser than the output step.
        q_in = self.prod.get(n.input[0])
        hi = self.qview(q_in)[1].hi if q_in is not None and q_in.op_type == "QuantizeLinear" else 255
        k = code_multiplier(q, hi) if wz == 0 else \
            np.ones(q.shape[0], np.int64)
        sign, sw = np.where(m < 0, -1, 1), np.abs(m) / sx / k
        bias = np.round(b / (sx * np.maximum(sw, 1e-30)))
        if not (sw > 0).all() or np.abs(bias).max() >= 2 ** 31:
            return False  # a dead channel or a bias beyond int32: keep the float rescale
        c = self.choose(y, copies=True)
        if c is None:
            return False
        a[w] = (q * (sign * k).reshape(-1, 1, 1, 1) + wz).astype(a[w].dtype)
        layer = w.rsplit(".weight_q", 1)[0]
        if (k > 1).any():
            self.multipliers[layer] = k.tolist()
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        ins = [self.fix(n.input[0]), sx_name, n.input[2], w, self.g.f32(sw, f"{layer}.w_scale"), n.input[3],
               c.s_name, c.zp_name, self.g.init(bias.astype(np.int32), f"{layer}.bias_int32")]
        self.produce(y, c, self.op("QLinearConv", ins, layer, **attrs))
        self.skip |= {id(x) for x in chain}
        self.copies(y, c, ins, layer, attrs)
        self.g.fused[layer] = np.flatnonzero(sign < 0).tolist()
        return True

    def copies(self, y: str, c: Codes, ins: list[str], layer: str, attrs: dict) -> None:
        """Consumers that quantize y (through ReLU/MaxPool/Flatten) at another scale than the codes chosen
        for it (an exit head beside the backbone's next layer) get a QLinearConv of their own, writing
        their very codes: requantizing from shared codes would round twice and move ~1% of them."""
        t, path = y, []
        while len(self.cons.get(t, [])) == 1 and self.cons[t][0].op_type in CODE_OPS:
            path.append(self.cons[t][0])
            t = path[-1].output[0]
        qs, others = self.uses(t)
        for u in qs:
            if u.q is None or others or (u.scale, u.zp) == (c.scale, c.zp) or id(u.q) in self.skip:
                continue
            codes = self.op("QLinearConv", [*ins[:6], u.q.input[1], u.q.input[2], ins[8]], layer, **attrs)
            for n in path:
                a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
                if n.op_type == "Relu" and u.zp:
                    codes = self.op("Clip", [codes, u.q.input[2], self.g.init(np.array(255, np.uint8), "hi")], layer)
                elif n.op_type != "Relu":
                    codes = self.op(n.op_type, [codes], layer, **a)
            if (u.lo, u.hi) != (0, 255):
                lo, hi = self.g.init(np.array(u.lo, np.uint8), "lo"), self.g.init(np.array(u.hi, np.uint8), "hi")
                codes = self.op("Clip", [codes, lo, hi], layer)
            self.alias[u.q.output[0]] = codes
            self.skip.add(id(u.q))
            self.copied.append(layer)

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
