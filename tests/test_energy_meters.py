"""Meters against fake sysfs trees (this machine has no RAPL, no Jetson, no NVML)."""
import sys
import time
import types

import pytest

from chaincomp.energy.meters import (JetsonRailMeter, MeterUnavailable, NvmlMeter, RaplMeter, detect_meter)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def put(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def rapl_tree(root, packages=2, max_uj=1_000_000):
    for i in range(packages):
        z = root / f"intel-rapl:{i}"
        put(z / "name", f"package-{i}")
        put(z / "energy_uj", 0)
        put(z / "max_energy_range_uj", max_uj)
        put(root / f"intel-rapl:{i}" / f"intel-rapl:{i}:0" / "energy_uj", 0)   # core sub-zone
        put(root / f"intel-rapl:{i}:0" / "energy_uj", 123)                     # flat alias layout
    put(root / f"intel-rapl:{packages}" / "name", "psys")
    put(root / f"intel-rapl:{packages}" / "energy_uj", 0)
    return root


def test_rapl_sums_packages_skips_subzones_and_psys(tmp_path):
    root = rapl_tree(tmp_path / "powercap")
    clock = Clock()
    m = RaplMeter(root, clock=clock)
    assert len(m.zones) == 2
    put(root / "intel-rapl:0" / "energy_uj", 100)
    m.begin()
    put(root / "intel-rapl:0" / "energy_uj", 200_100)       # +0.2 J
    put(root / "intel-rapl:1" / "energy_uj", 300_000)       # +0.3 J
    put(root / "intel-rapl:2" / "energy_uj", 9_000_000)     # psys: ignored
    clock.t = 2.0
    r = m.end()
    assert r.joules == pytest.approx(0.5) and r.seconds == 2.0
    assert r.kind == "measured" and r.source == "rapl" and len(r.domains) == 2


def test_rapl_wraparound_and_multiple_wraps_with_sample(tmp_path):
    root = rapl_tree(tmp_path / "pc", packages=1, max_uj=1_000_000)
    e = root / "intel-rapl:0" / "energy_uj"
    put(e, 900_000)
    m = RaplMeter(root)
    with m.window() as w:
        put(e, 100_000)                                     # wrapped: +200_000 uJ
    assert w.reading.joules == pytest.approx(0.2)
    m.begin()
    for v in (600_000, 100_000, 600_000, 100_000):          # two wraps, sampled between
        put(e, v)
        m.sample()
    assert m.end().joules == pytest.approx(2.0)


def test_rapl_absent_or_unreadable(tmp_path):
    with pytest.raises(MeterUnavailable, match="no package zones"):
        RaplMeter(tmp_path / "nothing")
    z = tmp_path / "pc" / "intel-rapl:0"
    (z / "energy_uj").mkdir(parents=True)                   # reading it raises an OSError
    with pytest.raises(MeterUnavailable, match="cannot read"):
        RaplMeter(tmp_path / "pc")


def iio_tree(root):
    d0 = root / "0-0040" / "iio:device0"
    put(d0 / "name", "ina3221x")
    for n, (rail, mw) in enumerate([("VDD_SYS_GPU", 1500), ("VDD_SYS_SOC", 800), ("VDD_4V0_WIFI", 20)]):
        put(d0 / f"rail_name_{n}", rail)
        put(d0 / f"in_power{n}_input", mw)
    d1 = root / "0-0041" / "iio:device1"
    put(d1 / "rail_name_0", "VDD_IN")
    put(d1 / "in_power0_input", 5000)
    put(d1 / "rail_name_1", "VDD_SYS_CPU")
    put(d1 / "in_voltage1_input", 19000)                    # mV
    put(d1 / "in_current1_input", 100)                      # mA -> 1900 mW
    return root


def test_jetson_iio_layout_integrates_power_trapezoid(tmp_path):
    root = iio_tree(tmp_path / "ina3221x")
    clock = Clock()
    m = JetsonRailMeter(root, background=False, clock=clock)
    assert list(m.rails) == ["VDD_IN"]                      # module input only: no double counting
    m.begin()                                               # 5 W at t=0
    put(root / "0-0041" / "iio:device1" / "in_power0_input", 7000)
    clock.t = 1.0
    m.sample()                                              # 7 W at t=1
    clock.t = 2.0
    r = m.end()                                             # 7 W at t=2
    assert r.joules == pytest.approx((5 + 7) / 2 + 7) and r.kind == "measured"


def test_jetson_selected_rails_and_voltage_current_product(tmp_path):
    root = iio_tree(tmp_path / "ina3221x")
    clock = Clock()
    m = JetsonRailMeter(root, rails=["VDD_SYS_CPU", "VDD_SYS_GPU"], background=False, clock=clock)
    m.begin()
    clock.t = 0.5
    r = m.end()
    assert r.domains == pytest.approx({"VDD_SYS_CPU": 1.9 * 0.5, "VDD_SYS_GPU": 1.5 * 0.5})
    with pytest.raises(MeterUnavailable, match="VDD_NOPE"):
        JetsonRailMeter(root, rails=["VDD_NOPE"])


def test_jetson_hwmon_layout(tmp_path):
    root = tmp_path / "ina3221"
    h = root / "1-0040" / "hwmon" / "hwmon3"
    put(h / "name", "ina3221")
    put(h / "in1_label", "VDD_IN"), put(h / "in1_input", 5000), put(h / "curr1_input", 1200)
    put(h / "in2_label", "VDD_CPU_GPU_CV"), put(h / "power2_input", 2_500_000)   # uW
    put(h / "in3_label", "NC"), put(h / "in3_input", 0), put(h / "curr3_input", 0)
    other = tmp_path / "ina3221" / "hwmon9"                  # another chip's labels are ignored
    put(other / "name", "nct6775"), put(other / "in0_label", "Vcore"), put(other / "power0_input", 1)
    clock = Clock()
    m = JetsonRailMeter(root, background=False, clock=clock)
    assert list(m.rails) == ["VDD_IN"]
    m.begin()
    clock.t = 1.0
    assert m.end().joules == pytest.approx(6.0)             # 5 V x 1.2 A for 1 s
    g = JetsonRailMeter(root, rails=["VDD_CPU_GPU_CV"], background=False, clock=clock)
    g.begin()
    clock.t = 3.0
    assert g.end().joules == pytest.approx(2.5 * 2)


def test_jetson_background_polling(tmp_path):
    root = iio_tree(tmp_path / "ina3221x")
    m = JetsonRailMeter(root, interval_s=0.002)
    with m:
        time.sleep(0.05)
    assert len(m._samples) > 3
    assert m.last.joules == pytest.approx(5.0 * m.last.seconds, rel=0.2)


def test_jetson_absent(tmp_path):
    with pytest.raises(MeterUnavailable):
        JetsonRailMeter(tmp_path)


def fake_nvml(counter, fail=False):
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def energy(h):
        if fail:
            raise NVMLError("Not Supported")
        return counter["mj"]

    mod.NVMLError = NVMLError
    mod.nvmlInit = lambda: None
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    mod.nvmlDeviceGetTotalEnergyConsumption = energy
    return mod


def test_nvml_meter_with_fake_module(monkeypatch):
    counter = {"mj": 10_000}
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(counter))
    m = NvmlMeter(0)
    m.begin()
    counter["mj"] = 12_500
    r = m.end()
    assert r.joules == pytest.approx(2.5) and r.source == "nvml" and r.kind == "measured"
    m.close()


def test_nvml_absent_or_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(MeterUnavailable, match="not installed"):
        NvmlMeter()
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({"mj": 0}, fail=True))
    with pytest.raises(MeterUnavailable, match="no energy counter"):
        NvmlMeter()


def test_detect_meter(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect_meter(rapl_root=empty, jetson_root=empty) is None
    rapl = rapl_tree(tmp_path / "pc")
    assert isinstance(detect_meter(rapl_root=rapl, jetson_root=empty), RaplMeter)
    jet = iio_tree(tmp_path / "ina")
    assert isinstance(detect_meter(rapl_root=rapl, jetson_root=jet), JetsonRailMeter)
    assert isinstance(detect_meter(rapl_root=rapl, jetson_root=jet, order=("rapl", "jetson")), RaplMeter)
    with pytest.raises(RuntimeError):
        RaplMeter(rapl).end()
