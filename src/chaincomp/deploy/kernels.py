"""The manifest's account of kernels: what the recipe asked for (bits) against what the runtime computes
with (8-bit kernels, which ops, which form). Apart from export.py, which writes and checks the files."""
from __future__ import annotations

from collections import Counter


def kernel_note(layers: dict[str, dict], kernels: str = "int8", form: str = "fast") -> dict:
    """What the recipe asked for versus what the runtime computes with (layers carry their op). form: fast,
    faithful (Int8Pass) or tensorrt (qdq.int8_activations)."""
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
    if kernels == "qdq":
        codes = ("8-bit codes only where PyTorch quantizes (residual streams and exit-segment features stay float)"
                 if form == "faithful" else "8-bit codes between layers and between exit segments")
        ops = (f"Q/DQ form (QuantizeLinear/DequantizeLinear around standard Conv/Gemm/Add/pools): the int8 pass's "
               f"graph written portably, exact weight codes with per-channel scales, the QAT activation scales, "
               f"{codes}; ORT fuses it into the same kernels "
               f"({fused} conv layers on QLinearConv, {n['QGemm']} linear layers on QGemm; see ort_ops)")
        if form == "tensorrt":
            ops = ("TensorRT's explicit quantization: an int8 Q/DQ pair (zero point 0) before every quantized layer, "
                   "int8 weight codes per channel, float between layers and between exit segments (kernels.tensorrt)")
    low = any(w < 8 or a < 8 for w, a in pairs)
    bits = (f"recipe bits {asked}; ONNX Runtime has no kernels below 8 bits, so the values are kept exactly "
            "in 8-bit containers and run on 8-bit kernels: bits below 8 bring no extra speed here" if low
            else f"recipe bits {asked}")
    wide = sum(v.get("weight_codes") == "uint8+128" for v in layers.values())
    if wide:
        ops += (f"; {wide} layer(s) keep their weight codes as uint8 + 128: 8-bit inputs times weight codes "
                "beyond 64 can saturate ORT's uint8 x int8 kernels on x86 CPUs without VNNI")
    return {"kind": "int8", "kernel_bits": 8, "recipe_bits": [f"W{w}A{a}" for w, a in pairs], "mode": kernels,
            "qlinear_layers": fused, "note": f"{bits}. {ops}"}
