"""Frequency controllers: apply the DVFS policy's operating point to the hardware, or record it.

One interface, three backends: Linux cpufreq (userspace governor), Jetson GPU devfreq, and a
dry run that changes nothing. A controller must never break an inference: if a sysfs write fails
(no root, read-only attribute, hardware gone) it warns once and continues as a dry run. Original
governors and limits are restored on ``close()`` (or leaving ``with``).

    with make_controller("auto") as ctl:
        point, met = choose_point(profile, remaining, elapsed, deadline)
        ctl.set_point(point)          # rounds up to an available frequency
"""
from __future__ import annotations

import re
import stat
import warnings
from pathlib import Path

_DEVFREQ_GPU = re.compile(r"gp10b|gv11b|ga10b|gm20b|gpu", re.I)


class ControllerUnavailable(RuntimeError):
    """No such frequency interface on this machine."""


def _read(p: Path) -> str:
    return p.read_text().strip()


def _write(p: Path, value: object) -> None:
    """Write a sysfs attribute; a file without write bits is refused even for root (as sysfs does)."""
    if not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{p} is read-only")
    p.write_text(f"{value}\n")


def _round_up(mhz: float, available: list[float]) -> float:
    """Smallest available frequency >= mhz (so the policy's deadline still holds), else the highest."""
    if not available:
        return mhz
    above = [f for f in available if f >= mhz - 1e-6]
    return min(above) if above else max(available)


class FrequencyController:
    """Base: records every request in ``history`` (MHz actually chosen); subclasses apply it."""

    kind = "dry_run"

    def __init__(self, available_mhz: list[float] | None = None):
        self._available = sorted(available_mhz or [])
        self.history: list[float] = []
        self.dry = True          # True: record only (not started, dry-run kind, or a write failed)
        self.started = False

    def available_mhz(self) -> list[float]:
        return list(self._available)

    def set_point(self, point) -> float:
        """Go to ``point`` (anything with ``freq_mhz``, or a number in MHz); returns the MHz chosen."""
        mhz = _round_up(float(getattr(point, "freq_mhz", point)), self.available_mhz())
        self.history.append(mhz)
        if not self.dry:
            try:
                self._apply(mhz)
            except OSError as e:
                warnings.warn(f"{self.kind}: cannot set {mhz} MHz ({e}); continuing as a dry run", stacklevel=2)
                self.dry = True
        return mhz

    def start(self) -> "FrequencyController":
        """Take control (governor switch); raises OSError if the hardware refuses. make_controller calls it."""
        self.started = True
        return self

    def _apply(self, mhz: float) -> None: ...

    def close(self) -> None:
        """Restore what was changed; never raises (warns instead)."""

    def __enter__(self) -> "FrequencyController":
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class DryRunController(FrequencyController):
    """Records the requested points and changes nothing: for machines without DVFS, and for tests."""


class CpufreqController(FrequencyController):
    """Linux cpufreq: ``userspace`` governor and ``scaling_setspeed`` (kHz) on every ``cpuN/cpufreq``."""

    kind = "cpufreq"

    def __init__(self, root: str | Path = "/sys/devices/system/cpu", cpus: list[int] | None = None):
        root = Path(root)
        dirs = sorted((d / "cpufreq" for d in root.glob("cpu[0-9]*") if re.fullmatch(r"cpu\d+", d.name)),
                      key=lambda d: int(d.parent.name[3:]))
        dirs = [d for d in dirs if (d / "scaling_governor").exists()
                and (cpus is None or int(d.parent.name[3:]) in cpus)]
        if not dirs:
            raise ControllerUnavailable(f"cpufreq: no cpu*/cpufreq under {root}")
        govs = dirs[0] / "scaling_available_governors"
        if govs.exists() and "userspace" not in _read(govs).split():
            raise ControllerUnavailable(f"cpufreq: no userspace governor in {govs} (intel_pstate?)")
        freqs = dirs[0] / "scaling_available_frequencies"
        super().__init__([int(x) / 1000 for x in _read(freqs).split()] if freqs.exists() else None)
        self.dirs = dirs
        self._orig = {d: (_read(d / "scaling_governor"), _read(d / "scaling_cur_freq")
                          if (d / "scaling_cur_freq").exists() else None) for d in dirs}
        self._changed: list[Path] = []

    def start(self) -> "CpufreqController":
        """Switch every CPU to the userspace governor; on failure undo and raise OSError."""
        try:
            for d in self.dirs:
                _write(d / "scaling_governor", "userspace")
                self._changed.append(d)
        except OSError:
            self.close()
            raise
        self.dry, self.started = False, True
        return self

    def _apply(self, mhz: float) -> None:
        for d in self.dirs:
            _write(d / "scaling_setspeed", round(mhz * 1000))

    def close(self) -> None:
        for d in self._changed:
            gov, cur = self._orig[d]
            try:
                if gov == "userspace" and cur is not None:
                    _write(d / "scaling_setspeed", cur)
                _write(d / "scaling_governor", gov)
            except OSError as e:
                warnings.warn(f"cpufreq: cannot restore {d} ({e})", stacklevel=2)
        self._changed, self.dry, self.started = [], True, False


class JetsonDevfreqController(FrequencyController):
    """Jetson GPU devfreq (``/sys/class/devfreq/17000000.gp10b`` on a TX2); frequencies in Hz.

    Uses the ``userspace`` governor and ``userspace/set_freq`` where the kernel has them, else pins
    ``min_freq`` = ``max_freq`` (written in the order that keeps min <= max at every step).
    """

    kind = "jetson_devfreq"

    def __init__(self, root: str | Path = "/sys/class/devfreq"):
        root = Path(root)
        if not (root / "available_frequencies").exists():
            cands = [d for d in sorted(root.glob("*")) if _DEVFREQ_GPU.search(d.name)
                     and (d / "available_frequencies").exists()]
            if not cands:
                raise ControllerUnavailable(f"devfreq: no GPU device under {root}")
            root = cands[0]
        self.dev = root
        super().__init__([int(x) / 1e6 for x in _read(root / "available_frequencies").split()])
        govs = _read(root / "available_governors").split() if (root / "available_governors").exists() else []
        self.mode = "userspace" if "userspace" in govs and (root / "userspace" / "set_freq").exists() else "pin"
        self._orig = {f: _read(root / f) for f in ("governor", "min_freq", "max_freq") if (root / f).exists()}

    def start(self) -> "JetsonDevfreqController":
        if self.mode == "userspace":
            _write(self.dev / "governor", "userspace")
        else:  # probe writability now, not mid-inference
            _write(self.dev / "max_freq", _read(self.dev / "max_freq"))
        self.started, self.dry = True, False
        return self

    def _pin(self, lo: str, hi: str) -> None:
        if int(hi) >= int(_read(self.dev / "max_freq")):
            _write(self.dev / "max_freq", hi)
            _write(self.dev / "min_freq", lo)
        else:
            _write(self.dev / "min_freq", lo)
            _write(self.dev / "max_freq", hi)

    def _apply(self, mhz: float) -> None:
        hz = str(round(mhz * 1e6))
        if self.mode == "userspace":
            _write(self.dev / "userspace" / "set_freq", hz)
        else:
            self._pin(hz, hz)

    def close(self) -> None:
        if not self.started:
            return
        try:
            if "min_freq" in self._orig and "max_freq" in self._orig:
                self._pin(self._orig["min_freq"], self._orig["max_freq"])
            if "governor" in self._orig and self.mode == "userspace":
                _write(self.dev / "governor", self._orig["governor"])
        except OSError as e:
            warnings.warn(f"devfreq: cannot restore {self.dev} ({e})", stacklevel=2)
        self.started, self.dry = False, True


def make_controller(kind: str = "auto", root: str | Path | None = None, *,
                    cpufreq_root: str | Path = "/sys/devices/system/cpu",
                    devfreq_root: str | Path = "/sys/class/devfreq",
                    available_mhz: list[float] | None = None) -> FrequencyController:
    """A started controller of ``kind`` ("auto", "cpufreq", "jetson_devfreq", "dry_run").

    ``root`` overrides the sysfs root of an explicit kind. "auto" tries the Jetson GPU, then
    cpufreq. Whatever is absent or unwritable gives a ``DryRunController`` (with ``available_mhz``)
    and one warning line, so an inference never stops for want of DVFS.
    """
    if kind == "dry_run":
        return DryRunController(available_mhz)
    makers = {"jetson_devfreq": lambda r: JetsonDevfreqController(r or devfreq_root),
              "cpufreq": lambda r: CpufreqController(r or cpufreq_root)}
    if kind != "auto" and kind not in makers:
        raise ValueError(f"controller kind {kind!r} is not one of auto, {', '.join(makers)}, dry_run")
    reasons = []
    for k in (["jetson_devfreq", "cpufreq"] if kind == "auto" else [kind]):
        try:
            return makers[k](root if kind != "auto" else None).start()
        except (ControllerUnavailable, OSError, ValueError) as e:
            reasons.append(f"{k}: {e}")
    warnings.warn(f"no frequency control ({'; '.join(reasons)}); DVFS points are recorded, not applied",
                  stacklevel=2)
    return DryRunController(available_mhz)
