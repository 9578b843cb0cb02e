"""Which weight-code form an export writes, chosen from the runtime it is for. Why apart from export.py:
it is a decision about the target machine (its CPU flags), not about graphs.

- portable: int8 codes, zero point 0 (symmetric), per-channel scales: what TensorRT needs and what
  OpenVINO runs on its integer kernels.
- ort: the same codes, but stored as uint8 + 128 (zero point 128) in the layers where ONNX Runtime's
  uint8 x int8 kernels could saturate (lowering.may_saturate): x86 CPUs without VNNI add two products
  in int16 there (vpmaddubsw). OpenVINO runs such layers in float, TensorRT rejects them.
"""
from __future__ import annotations

import platform

from ..device import cpu_flags
from ..errors import UserError

WEIGHTS = ("auto", "portable", "ort")
TARGETS = ("ort", "openvino", "tensorrt")


def int16_pairs(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """Whether ORT's uint8 x int8 kernels add products in int16 on this CPU (x86 without VNNI)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"}


def choose_weights(weights: str = "auto", target: str = "ort", machine: str | None = None,
                   flags: set[str] | None = None) -> dict:
    """{'form': 'portable'|'ort', 'asked', 'target', 'why'}: the form `auto` picks from the target (ORT on
    this CPU: the ort form only where its kernels pair products in int16; any other runtime: portable)."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights: '{weights}'; choose one of {', '.join(WEIGHTS)}")
    if target not in TARGETS:
        raise UserError(f"--target: '{target}'; choose one of {', '.join(TARGETS)}")
    if weights != "auto":
        why = "asked for (--weights)"
        form = weights
    elif target != "ort":
        form, why = "portable", f"target {target}: int8 symmetric weight codes are what it runs on integer kernels"
    elif int16_pairs(machine, flags):
        form, why = "ort", ("target ort on an x86 CPU without VNNI: its uint8 x int8 kernels add products in int16, "
                            "so layers that could saturate keep uint8 + 128 codes (exact there; OpenVINO runs those "
                            "layers in float, TensorRT rejects them: use --weights portable for them)")
    else:
        form, why = "portable", "target ort on a CPU whose int8 kernels do not saturate (VNNI or not x86)"
    return {"form": form, "asked": weights, "target": target, "why": why}


def tensorrt_note(halved: list[str]) -> dict:
    """The manifest's word on a TensorRT file (qdq.int8_activations): what TensorRT gets, and the values
    whose 8-bit unsigned codes run at twice the scale (int8 with zero point 0 cannot hold 0..255)."""
    return {"activations": "int8, zero point 0 (TensorRT's explicit quantization); float between layers, "
                           "TensorRT fuses DQ -> Conv -> ReLU -> Q itself",
            "halved": halved,
            "note": (f"{len(halved)} value(s) with 8-bit unsigned codes run at twice the scale (7 bits) since int8 "
                     "with zero point 0 cannot hold 0..255; the check measures what that costs") if halved else
                    "every activation code is the model's own"}
