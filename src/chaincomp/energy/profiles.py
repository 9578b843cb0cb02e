"""Platform profiles: a board's DVFS operating points as a data file the user can write.

A profile is YAML (schema below). Each operating point has a frequency and a voltage and, where
the user measured it, the power under load. Where power is not measured it is modelled as
``P = a*C*V^2*f + P_static(V)`` with ``P_static(V) = k * V**exponent`` (leakage current times
voltage for exponent 1). Bad files fail at load with one ``UserError`` line naming file and field,
never later in the middle of an inference.

    name: my_board                      # required
    device: cpu                         # free text: cpu, gpu, ...
    description: "..."
    activity: 0.5                       # a, 0 < a <= 1     } needed when any point
    capacitance_f: 1.5e-9               # C, farads          } has no power_w
    static_power: {k_w_per_v: 0.3, exponent: 1.0}         # }
    idle_power_w: 0.2                   # optional, >= 0: power while waiting for the deadline
    macs_per_cycle: {"8x8": 64, "32x32": 16}   # optional, "WxA" bits; or cycles_per_mac, not both
    operating_points:                   # frequencies strictly increasing, voltages non-decreasing
      - {freq_mhz: 806.4, voltage_v: 0.80, power_w: 1.9}   # power_w optional (measured)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError

BUILTIN_DIR = Path(__file__).parent / "profiles"
_BITS_KEY = re.compile(r"^\d+x\d+$")


@dataclass(frozen=True)
class Point:
    """An operating point with its power resolved (measured if the profile says so, else modelled)."""

    freq_mhz: float
    voltage_v: float
    power_w: float
    power_kind: Literal["measured", "modelled"]
    dynamic_w: float | None = None
    static_w: float | None = None

    @property
    def freq_hz(self) -> float:
        return self.freq_mhz * 1e6

    @property
    def energy_per_cycle_j(self) -> float:
        """(P_dyn + P_static) / f: static power is paid for the time each cycle takes."""
        return self.power_w / self.freq_hz


class OperatingPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    freq_mhz: float = Field(gt=0)
    voltage_v: float = Field(gt=0)
    power_w: float | None = Field(default=None, gt=0)


class StaticPower(BaseModel):
    """P_static(V) = k_w_per_v * V**exponent."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    k_w_per_v: float = Field(gt=0)
    exponent: float = Field(default=1.0, gt=0)

    def __call__(self, voltage_v: float) -> float:
        return self.k_w_per_v * voltage_v ** self.exponent


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str = Field(min_length=1)
    device: str = "cpu"
    description: str = ""
    operating_points: list[OperatingPoint] = Field(min_length=1)
    activity: float | None = Field(default=None, gt=0, le=1)
    capacitance_f: float | None = Field(default=None, gt=0)
    static_power: StaticPower | None = None
    idle_power_w: float | None = Field(default=None, ge=0)
    macs_per_cycle: dict[str, float] | None = None
    cycles_per_mac: dict[str, float] | None = None

    @field_validator("macs_per_cycle", "cycles_per_mac")
    @classmethod
    def _bits_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, x in (v or {}).items():
            if not _BITS_KEY.match(k):
                raise ValueError(f"key {k!r} must be 'WxA' bits, e.g. '8x8'")
            if x <= 0:
                raise ValueError(f"value for {k!r} must be > 0 (got {x})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        pts = self.operating_points
        for i in range(1, len(pts)):
            if pts[i].freq_mhz <= pts[i - 1].freq_mhz:
                raise ValueError(f"operating_points[{i}].freq_mhz: frequencies must be strictly increasing "
                                 f"({pts[i].freq_mhz} after {pts[i - 1].freq_mhz})")
            if pts[i].voltage_v < pts[i - 1].voltage_v:
                raise ValueError(f"operating_points[{i}].voltage_v: voltages must not decrease "
                                 f"({pts[i].voltage_v} after {pts[i - 1].voltage_v})")
        unmeasured = [i for i, p in enumerate(pts) if p.power_w is None]
        if unmeasured:
            for f in ("activity", "capacitance_f", "static_power"):
                if getattr(self, f) is None:
                    raise ValueError(f"{f}: required because operating_points[{unmeasured[0]}] has no power_w "
                                     "(give measured power_w for every point, or the model parameters)")
        if self.macs_per_cycle is not None and self.cycles_per_mac is not None:
            raise ValueError("cycles_per_mac: give macs_per_cycle or cycles_per_mac, not both")
        return self

    def points(self) -> list[Point]:
        """Operating points, lowest frequency first, each with its power resolved."""
        out = []
        for p in self.operating_points:
            dyn = st = None
            if self.activity is not None and self.capacitance_f is not None:
                dyn = self.activity * self.capacitance_f * p.voltage_v ** 2 * p.freq_mhz * 1e6
            if self.static_power is not None:
                st = self.static_power(p.voltage_v)
            if p.power_w is not None:
                out.append(Point(p.freq_mhz, p.voltage_v, p.power_w, "measured", dyn, st))
            else:
                out.append(Point(p.freq_mhz, p.voltage_v, dyn + st, "modelled", dyn, st))
        return out

    def top(self) -> Point:
        return self.points()[-1]

    def cycles(self, macs_by_bits: dict[tuple[int, int], float]) -> float:
        """Cycles for a MAC count per (weight_bits, act_bits), from the profile's throughput table."""
        table, per_mac = (self.cycles_per_mac, True) if self.cycles_per_mac else (self.macs_per_cycle, False)
        if not table:
            raise UserError(f"profile {self.name}: no macs_per_cycle or cycles_per_mac; give cycles directly")
        total = 0.0
        for (w, a, *_), macs in macs_by_bits.items():
            key = f"{w}x{a}"
            if key not in table:
                raise UserError(f"profile {self.name}: no throughput for {key} bits; add it to "
                                f"{'cycles_per_mac' if per_mac else 'macs_per_cycle'}")
            total += macs * table[key] if per_mac else macs / table[key]
        return total


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def _one_line(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"]).lstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(parts) - 3} more)" if len(parts) > 3 else ""
    return f"{source}: " + "; ".join(parts[:3]) + more


def profile_from_dict(data: object, source: str = "<profile>") -> Profile:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a profile must be a YAML mapping (got {type(data).__name__})")
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise UserError(_one_line(source, e)) from None


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a built-in profile by name (``generic_cpu``, ``jetson_tx2_cpu``, ``jetson_tx2_gpu``) or a user YAML."""
    p = Path(name_or_path)
    if not p.exists() and p.suffix not in (".yaml", ".yml") and p.name == str(name_or_path):
        p = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise UserError(f"profile {name_or_path!r}: not a file and not a built-in "
                            f"(built-ins: {', '.join(builtin_profiles())})")
    from .. import safe_yaml        # aliases, duplicate keys and oversized values refused as in recipes

    data = safe_yaml.load(safe_yaml.read_document(p, str(p), what="platform profile"), str(p),
                          what="platform profile")
    return profile_from_dict(data, str(p))
