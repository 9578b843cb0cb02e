import math

import pytest

from chaincomp.energy.ops import (dram_energy_j, int_add_pj, int_mul_pj, mac_energy_j, modelled_energy_j,
                                  sram_energy_j)

pJ = 1e-12


def test_table_anchors_are_exact():
    assert int_mul_pj(8, 8) == pytest.approx(0.2)
    assert int_mul_pj(32, 32) == pytest.approx(3.1)
    assert int_add_pj(8) == pytest.approx(0.03)
    assert int_add_pj(32) == pytest.approx(0.1)


def test_fp32_and_fp16_macs():
    assert mac_energy_j(32, 32) == pytest.approx(4.6 * pJ)            # 3.7 + 0.9, 32x32 is FP32
    assert mac_energy_j(16, 16, is_float=True) == pytest.approx(1.5 * pJ)
    with pytest.raises(ValueError):
        mac_energy_j(8, 8, is_float=True)


def test_int_mac_scales_with_product_and_uses_32bit_accumulator():
    assert mac_energy_j(8, 8) == pytest.approx((0.2 + 0.1) * pJ)
    assert mac_energy_j(4, 8) == pytest.approx((0.1 + 0.1) * pJ)      # half the product, same acc
    assert mac_energy_j(16, 16) == pytest.approx((0.8 + 0.1) * pJ)    # 256 -> still 8x8 coefficient
    assert mac_energy_j(32, 32, is_float=False) == pytest.approx((3.1 + 0.1) * pJ)
    assert mac_energy_j(8, 8, acc_bits=16) == pytest.approx((0.2 + 0.06) * pJ)
    with pytest.raises(ValueError):
        mac_energy_j(0, 8)


def test_memory_per_byte():
    assert dram_energy_j(4) == pytest.approx(640 * pJ)
    assert sram_energy_j(4) == pytest.approx(5 * pJ)
    with pytest.raises(ValueError):
        dram_energy_j(-1)


def test_modelled_breakdown_and_label():
    out = modelled_energy_j({(32, 32): 1e6, (8, 8): 2e6}, dram_bytes=1e3, sram_bytes=4e3)
    assert out["kind"] == "modelled"
    assert out["compute_j"] == pytest.approx(1e6 * 4.6 * pJ + 2e6 * 0.3 * pJ)
    assert out["dram_j"] == pytest.approx(1e3 * 160 * pJ)
    assert out["memory_j"] == pytest.approx(out["dram_j"] + 4e3 * 1.25 * pJ)
    assert math.isclose(out["total_j"], out["compute_j"] + out["memory_j"])


def test_fewer_dram_bytes_show_up_in_energy():
    a = modelled_energy_j({(8, 8): 1e6}, dram_bytes=1e6)
    b = modelled_energy_j({(8, 8): 1e6}, dram_bytes=0.25e6)
    assert b["total_j"] < a["total_j"] and b["compute_j"] == a["compute_j"]
