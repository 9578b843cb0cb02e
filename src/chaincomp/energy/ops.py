"""Per-operation energy, the "modelled" half of the project's energy numbers.

Source: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
45 nm at 0.9 V. Only the table's anchors are data; every other width is derived by the scaling
rules below, so a number for 4-bit weights is a model, not a measurement, and is labelled
``kind="modelled"`` wherever it leaves this module.

Scaling rules (the energy guide asks for width scaling and for saying which):
- integer multiply: linear in the product of the operand widths, w * a. The pJ-per-bit^2
  coefficient comes from the nearer anchor: 8x8 (0.2 pJ / 64) for w*a <= 16*16, else 32x32
  (3.1 pJ / 1024). The two coefficients differ by 3%, so the rule is exact at both anchors.
- integer add: linear in the width, coefficient from 8-bit (0.03 pJ / 8) for widths <= 16,
  else from 32-bit (0.1 pJ / 32).
- accumulator: integer MACs add into a 32-bit accumulator by default (what int8 GEMM/conv
  kernels do, e.g. onnxruntime QLinearConv, fbgemm), so an int8 MAC costs 0.2 + 0.1 pJ.
- floating point: 32x32 is FP32 (MAC = 3.7 + 0.9 pJ); 16x16 with ``is_float=True`` is FP16
  (1.1 + 0.4 pJ). No other float widths are in the table, so they are refused.
- memory: per byte, from the 32-bit (4-byte) read energies: DRAM 640 pJ, SRAM (8 KB) 5 pJ.
  Larger SRAMs cost more per access; 5 pJ is the table's small-array figure.
"""
from __future__ import annotations

PJ = 1e-12

# Horowitz ISSCC 2014, 45 nm, 0.9 V. Energies in pJ.
HOROWITZ_45NM_PJ: dict[str, float] = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "int8_mul": 0.2,
    "int32_mul": 3.1,
    "fp16_add": 0.4,
    "fp16_mul": 1.1,
    "fp32_add": 0.9,
    "fp32_mul": 3.7,
    "sram_read_32bit_8kb": 5.0,
    "dram_read_32bit": 640.0,
}

DEFAULT_ACC_BITS = 32
_T = HOROWITZ_45NM_PJ


def _check_bits(**bits: int) -> None:
    for name, b in bits.items():
        if int(b) != b or b <= 0:
            raise ValueError(f"{name} must be a positive integer number of bits (got {b!r})")


def int_mul_pj(weight_bits: int, act_bits: int) -> float:
    """Integer multiply in pJ: linear in weight_bits * act_bits, nearer-anchor coefficient."""
    _check_bits(weight_bits=weight_bits, act_bits=act_bits)
    p = weight_bits * act_bits
    return p * (_T["int8_mul"] / 64 if p <= 256 else _T["int32_mul"] / 1024)


def int_add_pj(bits: int) -> float:
    """Integer add in pJ: linear in the width, nearer-anchor coefficient."""
    _check_bits(bits=bits)
    return bits * (_T["int8_add"] / 8 if bits <= 16 else _T["int32_add"] / 32)


def mac_energy_j(weight_bits: int, act_bits: int, *, is_float: bool | None = None,
                 acc_bits: int = DEFAULT_ACC_BITS) -> float:
    """Energy in joules of one multiply-accumulate (modelled, Horowitz ISSCC 2014, 45 nm).

    ``is_float=None`` means: float exactly when both widths are 32 (the unquantized FP32 model).
    Integer MACs are one multiply (scaled by w*a) plus one add at ``acc_bits`` (default 32).
    """
    _check_bits(weight_bits=weight_bits, act_bits=act_bits, acc_bits=acc_bits)
    if is_float is None:
        is_float = weight_bits == 32 and act_bits == 32
    if is_float:
        if weight_bits == act_bits == 32:
            return (_T["fp32_mul"] + _T["fp32_add"]) * PJ
        if weight_bits == act_bits == 16:
            return (_T["fp16_mul"] + _T["fp16_add"]) * PJ
        raise ValueError(f"no float energy for {weight_bits}x{act_bits} bits; the table has FP16 and FP32 only")
    return (int_mul_pj(weight_bits, act_bits) + int_add_pj(acc_bits)) * PJ


def dram_energy_j(nbytes: float) -> float:
    """DRAM traffic energy in joules: 640 pJ per 32-bit read, i.e. 160 pJ per byte (reads and writes alike)."""
    if nbytes < 0:
        raise ValueError(f"bytes must be >= 0 (got {nbytes})")
    return nbytes * _T["dram_read_32bit"] / 4 * PJ


def sram_energy_j(nbytes: float) -> float:
    """On-chip SRAM traffic energy in joules: 5 pJ per 32-bit read of an 8 KB array, 1.25 pJ per byte."""
    if nbytes < 0:
        raise ValueError(f"bytes must be >= 0 (got {nbytes})")
    return nbytes * _T["sram_read_32bit_8kb"] / 4 * PJ


def modelled_energy_j(macs_by_bits: dict[tuple, float], dram_bytes: float, sram_bytes: float = 0.0) -> dict:
    """Modelled energy of one inference: compute + memory, in joules.

    ``macs_by_bits`` maps ``(weight_bits, act_bits)`` (or ``(w, a, is_float)``) to a MAC count, as
    ``CostProfile.macs_by_bits()`` returns. Counting DRAM bytes, not only MACs, is what makes
    feature-map compression visible in energy (DRAM costs ~500x an int8 MAC per byte).
    """
    compute = 0.0
    for key, macs in macs_by_bits.items():
        w, a, *rest = key
        compute += macs * mac_energy_j(w, a, is_float=rest[0] if rest else None)
    dram, sram = dram_energy_j(dram_bytes), sram_energy_j(sram_bytes)
    return {"compute_j": compute, "dram_j": dram, "sram_j": sram, "memory_j": dram + sram,
            "total_j": compute + dram + sram, "kind": "modelled"}
