"""Hardware energy meters behind one window API; the "measured" half of the energy numbers.

A meter may be absent (no RAPL in a VM, not a Jetson, no pynvml): constructing it then raises
``MeterUnavailable``, a typed absence the caller can catch, and ``detect_meter`` returns the first
meter that works or None. Nothing here guesses: a number that comes out of a meter is a reading
of a hardware counter (or of power sensors integrated over time) and is labelled ``measured``.

    meter = detect_meter()
    if meter is not None:
        with meter.window() as w:
            model(x)
        print(w.reading.joules, w.reading.kind)   # ... "measured"
"""
from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


class MeterUnavailable(RuntimeError):
    """This meter cannot work on this machine (no device, no permission, no driver)."""


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    seconds: float
    source: str                                   # "rapl", "jetson_ina3221", "nvml"
    domains: dict[str, float] = field(default_factory=dict)   # joules per package / rail / GPU
    kind: str = "measured"


@dataclass
class Window:
    reading: EnergyReading | None = None


class EnergyMeter(ABC):
    """begin() ... end() -> EnergyReading; or ``with meter.window() as w``; or ``with meter:``."""

    source = "meter"

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._t0: float | None = None
        self.last: EnergyReading | None = None

    def begin(self) -> None:
        self._t0 = self._clock()
        self._start()

    def end(self) -> EnergyReading:
        if self._t0 is None:
            raise RuntimeError("end() without begin()")
        domains = self._stop()
        self.last = EnergyReading(sum(domains.values()), self._clock() - self._t0, self.source, domains)
        self._t0 = None
        return self.last

    def close(self) -> None:
        """Release the device handle, if any."""

    def sample(self) -> None:
        """Take an intermediate reading (counter wraparound, power integration); optional to call."""

    @contextmanager
    def window(self) -> Iterator[Window]:
        w = Window()
        self.begin()
        try:
            yield w
        finally:
            w.reading = self.end()

    def __enter__(self) -> "EnergyMeter":
        self.begin()
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self) -> dict[str, float]: ...


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class RaplMeter(EnergyMeter):
    """Intel/AMD RAPL through powercap: sums ``intel-rapl:N/energy_uj`` over packages.

    Sub-zones (``intel-rapl:N:M``, core/uncore/dram) are inside their package and are not added
    again; a ``psys`` zone (whole platform) would double count and is skipped. The counter wraps
    at ``max_energy_range_uj``; a wrap between two reads is undone, so call ``sample()`` at least
    once per wrap period (minutes to hours) in long windows.
    """

    source = "rapl"

    def __init__(self, root: str | Path = "/sys/class/powercap", clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        root = Path(root)
        self.zones: dict[str, tuple[Path, int]] = {}
        for d in sorted(root.glob("intel-rapl:*")):
            if not re.fullmatch(r"intel-rapl:\d+", d.name) or not (d / "energy_uj").exists():
                continue
            name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
            if name == "psys":
                continue
            try:
                _read_int(d / "energy_uj")
                rng = _read_int(d / "max_energy_range_uj") if (d / "max_energy_range_uj").exists() else 2**32
            except (OSError, ValueError) as e:
                raise MeterUnavailable(f"RAPL: cannot read {d / 'energy_uj'} ({type(e).__name__}); "
                                       "on Linux >= 5.10 it is root-only") from None
            self.zones[f"{name}@{d.name}"] = (d / "energy_uj", rng)
        if not self.zones:
            raise MeterUnavailable(f"RAPL: no package zones under {root}")
        self._last: dict[str, int] = {}
        self._acc: dict[str, float] = {}

    def _start(self) -> None:
        self._last = {z: _read_int(p) for z, (p, _) in self.zones.items()}
        self._acc = dict.fromkeys(self.zones, 0.0)

    def sample(self) -> None:
        for z, (p, rng) in self.zones.items():
            now = _read_int(p)
            delta = now - self._last[z]
            self._acc[z] += (delta + rng if delta < 0 else delta) * 1e-6
            self._last[z] = now

    def _stop(self) -> dict[str, float]:
        self.sample()
        return dict(self._acc)


_JETSON_ROOTS = ("/sys/bus/i2c/drivers/ina3221x", "/sys/bus/i2c/drivers/ina3221", "/sys/class/hwmon")
_TOTAL_RAIL = re.compile(r"(^|_)IN$|^VDD_MUX$|^VIN_SYS_5V0$")


def _jetson_channels(root: Path) -> dict[str, Callable[[], float]]:
    """Rail name -> reader of its power in mW, for both INA3221 sysfs layouts.

    L4T <= 32 (``ina3221x`` IIO driver): ``<i2c>/iio:device*/rail_name_N`` with ``in_powerN_input``
    (mW) or ``in_voltageN_input`` (mV) and ``in_currentN_input`` (mA).
    L4T >= 34 / mainline hwmon driver: ``<i2c>/hwmon/hwmon*/inN_label`` with ``inN_input`` (mV) and
    ``currN_input`` (mA), or ``powerN_input`` (uW, the hwmon ABI unit).
    """
    dirs = [root, *root.glob("*"), *root.glob("*/iio:device*"), *root.glob("*/hwmon/hwmon*")]
    out: dict[str, Callable[[], float]] = {}
    for d in dirs:
        for f in sorted(d.glob("rail_name_*")):
            n = f.name.rsplit("_", 1)[-1]
            _add(out, f, _reader(d / f"in_power{n}_input", 1.0, d / f"in_voltage{n}_input", d / f"in_current{n}_input"))
        if (d / "name").exists() and "ina3221" not in (d / "name").read_text():
            continue  # another hwmon chip (e.g. under /sys/class/hwmon): its labels are not rails
        for f in sorted(d.glob("in*_label")):
            n = f.name[2:-6]
            _add(out, f, _reader(d / f"power{n}_input", 1e-3, d / f"in{n}_input", d / f"curr{n}_input"))
    return out


def _reader(power: Path, mw_per_unit: float, volt: Path, curr: Path) -> Callable[[], float] | None:
    """mW from a power file, else from mV x mA; None if the channel has neither."""
    if power.exists():
        return lambda: _read_int(power) * mw_per_unit
    if volt.exists() and curr.exists():
        return lambda: _read_int(volt) * _read_int(curr) / 1000
    return None


def _add(out: dict, label_file: Path, reader: Callable[[], float] | None) -> None:
    name = label_file.read_text().strip()
    if reader is not None and name and name.upper() != "NC" and name not in out:
        out[name] = reader


class JetsonRailMeter(EnergyMeter):
    """NVIDIA Jetson INA3221 power rails, integrated over time (trapezoid) into joules.

    The rails give power, not energy, so the meter samples them every ``interval_s`` in a
    background thread between begin() and end() (``background=False``: only at begin, end and
    explicit ``sample()`` calls). Default rails: the module inputs (``VDD_IN``, ``POM_5V_IN``,
    ``5V_IN``, ``VDD_MUX``...), which cover the whole board without double counting; if a board has
    none (AGX Xavier) all rails are summed. Pass ``rails=[...]`` for e.g. ``VDD_SYS_GPU`` only.
    """

    source = "jetson_ina3221"

    def __init__(self, root: str | Path | None = None, rails: list[str] | None = None,
                 interval_s: float = 0.02, background: bool = True, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        chans: dict[str, Callable[[], float]] = {}
        for r in [root] if root is not None else _JETSON_ROOTS:
            if Path(r).is_dir():
                chans = _jetson_channels(Path(r))
                if chans:
                    break
        if not chans:
            raise MeterUnavailable(f"Jetson: no INA3221 rails under {root or ', '.join(_JETSON_ROOTS)}")
        if rails is None:
            rails = [n for n in chans if _TOTAL_RAIL.search(n.upper())] or list(chans)
        missing = [r for r in rails if r not in chans]
        if missing:
            raise MeterUnavailable(f"Jetson: rails {missing} not found (have {sorted(chans)})")
        try:
            for r in rails:
                chans[r]()
        except (OSError, ValueError) as e:
            raise MeterUnavailable(f"Jetson: cannot read rail power ({type(e).__name__})") from None
        self.rails = {r: chans[r] for r in rails}
        self.interval_s, self.background = interval_s, background
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        s = (self._clock(), {r: f() for r, f in self.rails.items()})
        with self._lock:
            self._samples.append(s)

    def _poll(self) -> None:
        while not self._stop_evt.wait(self.interval_s):
            self.sample()

    def _start(self) -> None:
        self._samples = []
        self.sample()
        if self.background:
            self._stop_evt.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True, name="jetson-rail-meter")
            self._thread.start()

    def _stop(self) -> dict[str, float]:
        if self._thread is not None:
            self._stop_evt.set()
            self._thread.join()
            self._thread = None
        self.sample()
        joules = dict.fromkeys(self.rails, 0.0)
        for (t0, p0), (t1, p1) in zip(self._samples, self._samples[1:]):
            for r in joules:
                joules[r] += (p0[r] + p1[r]) / 2 * 1e-3 * (t1 - t0)
        return joules


class NvmlMeter(EnergyMeter):
    """NVIDIA GPU energy counter through NVML (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta+)."""

    source = "nvml"

    def __init__(self, index: int = 0, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        try:
            import pynvml
        except ImportError:
            raise MeterUnavailable("NVML: pynvml is not installed (pip install nvidia-ml-py)") from None
        self._nv = pynvml
        try:
            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._h)
        except Exception as e:  # pynvml.NVMLError and driver-load failures
            raise MeterUnavailable(f"NVML: GPU {index} has no energy counter ({e})") from None
        self.name = f"gpu{index}"
        self._e0 = 0

    def close(self) -> None:
        self._nv.nvmlShutdown()

    def _mj(self) -> int:
        return self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h)

    def _start(self) -> None:
        self._e0 = self._mj()

    def _stop(self) -> dict[str, float]:
        return {self.name: (self._mj() - self._e0) / 1000}


def detect_meter(*, rapl_root: str | Path = "/sys/class/powercap", jetson_root: str | Path | None = None,
                 nvml: bool = True, order: tuple[str, ...] = ("jetson", "rapl", "nvml")) -> EnergyMeter | None:
    """The first meter that works on this machine, in ``order``, or None (then report modelled energy only)."""
    makers = {"jetson": lambda: JetsonRailMeter(jetson_root), "rapl": lambda: RaplMeter(rapl_root),
              "nvml": (lambda: NvmlMeter()) if nvml else None}
    for name in order:
        make = makers[name]
        if make is None:
            continue
        try:
            return make()
        except MeterUnavailable:
            continue
    return None
