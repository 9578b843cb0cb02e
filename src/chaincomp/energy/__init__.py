"""Energy, two ways, always labelled: "modelled" (ops, profiles, dvfs) and "measured" (meters).

- ``ops``: per-operation energy (Horowitz ISSCC 2014, 45 nm) for MACs and bytes moved.
- ``profiles``: a board's DVFS operating points as a validated YAML data file.
- ``dvfs``: the least-energy point that meets a deadline, and a simulator of exit schedules.
- ``meters``: RAPL, Jetson INA3221 rails, NVML behind one begin()/end() window API.
- ``controllers``: cpufreq, Jetson devfreq and dry-run frequency controllers.
The cost ledger (MACs, BitOps, bytes of a real model) is ``chaincomp.energy.cost``.
"""
from .controllers import (ControllerUnavailable, CpufreqController, DryRunController, FrequencyController,
                          JetsonDevfreqController, make_controller)
from .dvfs import SCHEDULES, SimResult, choose_point, energy_of, simulate_inference
from .meters import (EnergyMeter, EnergyReading, JetsonRailMeter, MeterUnavailable, NvmlMeter, RaplMeter,
                     detect_meter)
from .ops import HOROWITZ_45NM_PJ, dram_energy_j, mac_energy_j, modelled_energy_j, sram_energy_j
from .profiles import OperatingPoint, Point, Profile, builtin_profiles, load_profile, profile_from_dict

__all__ = [
    "ControllerUnavailable", "CpufreqController", "DryRunController", "FrequencyController",
    "JetsonDevfreqController", "make_controller",
    "SCHEDULES", "SimResult", "choose_point", "energy_of", "simulate_inference",
    "EnergyMeter", "EnergyReading", "JetsonRailMeter", "MeterUnavailable", "NvmlMeter", "RaplMeter",
    "detect_meter",
    "HOROWITZ_45NM_PJ", "dram_energy_j", "mac_energy_j", "modelled_energy_j", "sram_energy_j",
    "OperatingPoint", "Point", "Profile", "builtin_profiles", "load_profile", "profile_from_dict",
]
