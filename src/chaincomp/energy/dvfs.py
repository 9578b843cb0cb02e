"""DVFS policy for a latency constraint, and a simulator that compares exit schedules (modelled).

Energy of N cycles at an operating point is E = (P_dyn(f, V) + P_static(V)) * N / f: static power
is paid for the time the work takes, which is why the slowest point is not always the cheapest.

Policy (Predictive Exit, Li et al. AAAI 2023): after a layer, with W_rem cycles predicted to remain
and t seconds spent, pick the point of least energy among those with t + W_rem / f <= D; if none
meets D, run at the highest point and report the miss.

Schedules the simulator compares, all over the same per-segment cycle counts:
- ``classic``: the whole network (no exit) at the top point.
- ``early_exit``: segments up to the exit at the top point; the platform can lower its point only
  once it knows it has exited, i.e. after the inference, so it idles until the deadline.
- ``predictive``: before each segment where the predictor gives a remaining-cycle estimate, the
  point is re-chosen from that estimate and the elapsed time.
Every schedule idles at the profile's ``idle_power_w`` (0 if unset) from its finish to the
deadline, so schedules are compared over the same window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UserError
from .profiles import Point, Profile

SCHEDULES = ("classic", "early_exit", "predictive")
_REL_TOL = 1e-9


def energy_of(point: Point, cycles: float) -> float:
    """Joules to run ``cycles`` at ``point``: power (dynamic + static) times the time N / f."""
    if cycles < 0:
        raise ValueError(f"cycles must be >= 0 (got {cycles})")
    return point.power_w * cycles / point.freq_hz


def _points(profile: Profile | Sequence[Point]) -> list[Point]:
    pts = profile.points() if isinstance(profile, Profile) else sorted(profile, key=lambda p: p.freq_mhz)
    if not pts:
        raise ValueError("no operating points")
    return pts


def choose_point(profile: Profile | Sequence[Point], remaining_cycles: float, elapsed_s: float,
                 deadline_s: float) -> tuple[Point, bool]:
    """The least-energy point that finishes ``remaining_cycles`` by ``deadline_s``; (top, False) if none does.

    Ties in energy go to the faster point (it finishes sooner at no cost).
    """
    pts = _points(profile)
    ok = [p for p in pts if elapsed_s + remaining_cycles / p.freq_hz <= deadline_s * (1 + _REL_TOL)]
    if not ok:
        return pts[-1], False
    return min(ok, key=lambda p: (energy_of(p, remaining_cycles), -p.freq_mhz)), True


@dataclass
class SimResult:
    """Outcome of one simulated inference. All energies are modelled."""

    schedule: str
    energy_j: float                # busy + idle
    busy_energy_j: float
    idle_energy_j: float
    latency_s: float
    met_deadline: bool
    points: list[Point]            # the point each executed segment ran at
    by_point: dict[float, dict] = field(default_factory=dict)  # freq_mhz -> cycles, seconds, energy_j
    kind: str = "modelled"

    @property
    def freqs_mhz(self) -> list[float]:
        return [p.freq_mhz for p in self.points]


def simulate_inference(profile: Profile | Sequence[Point], segments_cycles: Sequence[float], schedule: str,
                       deadline_s: float, *,
                       exit_after: int | None = None,
                       predicted_remaining: Sequence[float | None] | None = None,
                       reserve_s: Sequence[float] | None = None,
                       switch_latency_s: float = 0.0) -> SimResult:
    """Simulate one inference and return its modelled energy, latency and operating points.

    ``segments_cycles``: cycles of each segment (layer, or block plus its exit head) of the full
    network, in order. ``exit_after``: index of the segment after which the inference exits
    (None: it runs to the end); ``classic`` ignores it. ``predicted_remaining[i]``: for
    ``predictive``, the predictor's cycles still to run including segment i, known before segment
    i, or None where no prediction is made (the point is kept); omitted, the true remaining cycles
    are used (an oracle predictor). Before the first prediction the top point is used.
    ``reserve_s[i]``: seconds held back when the point is chosen before segment i, as if already
    spent (a guarded policy keeps time to finish at the top point if the prediction is wrong).
    ``switch_latency_s`` is added to the time at every change of point.
    """
    schedule = schedule.lower()
    if schedule not in SCHEDULES:
        raise UserError(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    n = len(segments_cycles)
    last = n - 1 if schedule == "classic" or exit_after is None else exit_after
    if not 0 <= last < n:
        raise ValueError(f"exit_after={exit_after} is outside 0..{n - 1}")
    run = [float(c) for c in segments_cycles[: last + 1]]
    pts = _points(profile)
    top = pts[-1]

    if schedule == "predictive":
        if predicted_remaining is None:
            predicted_remaining = [sum(run[i:]) for i in range(len(run))]
        elif len(predicted_remaining) < len(run):
            raise ValueError(f"predicted_remaining has {len(predicted_remaining)} entries, need {len(run)}")

    t = busy = 0.0
    point, used, by_point = top, [], {}
    for i, cyc in enumerate(run):
        if schedule == "predictive" and predicted_remaining[i] is not None:
            new, _ = choose_point(pts, predicted_remaining[i], t + (reserve_s[i] if reserve_s else 0.0), deadline_s)
            if new != point and i > 0:
                t += switch_latency_s
            point = new
        dt, e = cyc / point.freq_hz, energy_of(point, cyc)
        t, busy = t + dt, busy + e
        used.append(point)
        acc = by_point.setdefault(point.freq_mhz, {"cycles": 0.0, "seconds": 0.0, "energy_j": 0.0})
        acc["cycles"] += cyc
        acc["seconds"] += dt
        acc["energy_j"] += e

    idle_w = getattr(profile, "idle_power_w", None) or 0.0
    idle = idle_w * max(0.0, deadline_s - t)
    met = t <= deadline_s * (1 + _REL_TOL)
    return SimResult(schedule, busy + idle, busy, idle, t, met, used, by_point)
