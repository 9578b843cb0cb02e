"""Where tensors live: the device is named once at the edge (recipe `device:` or `--device`) and
resolved here; everything below reads it from `TaskData.device`, never picks one itself.

`auto` takes the GPU when there is one. Asking for CUDA where there is none is a user mistake: one
line naming the option or field that asked for it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"
DeviceName = Annotated[str, Field(pattern=PATTERN, description="auto | cpu | cuda | cuda:N (auto: cuda if available)")]
CHOICES = "auto, cpu, cuda or cuda:N"


def resolve(spec: str | torch.device | None, where: str = "device") -> torch.device:
    """The torch.device `spec` names; `where` (e.g. '--device' or 'recipe field device') names the
    option in the error when CUDA is asked for and absent."""
    from .errors import UserError

    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if not re.match(PATTERN, spec):
        raise UserError(f"{where}: '{spec}' is not a device; give {CHOICES}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"{where}: '{spec}' asked for, but no CUDA device is available here; use cpu or auto")
    dev = torch.device(spec)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"{where}: '{spec}' asked for, but this machine has {torch.cuda.device_count()} CUDA "
                        f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


def describe(device: torch.device) -> str:
    """What results record: 'cpu' or 'cuda:0 (NVIDIA H200)'."""
    if device.type != "cuda":
        return str(device)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"


def prepare(device: torch.device) -> None:
    """Once per process on a GPU: cuDNN autotuning and TF32 matmuls (fp32 storage, tensor-core math)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_field(name: str) -> str | None:
    """The first `name` line of /proc/cpuinfo (e.g. "model name", "flags"); None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (avx2, f16c, avx512_vnni...): what kernels can be built or chosen."""
    return set((cpu_field("flags") or "").split())


def amp_helps(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up here: on CUDA, and on CPUs with AMX bf16 matrix units
    (a ResNet-20 training step 1.7x faster on a 2-vCPU Xeon, benchmarks/train_cpu.md); elsewhere on the
    CPU bf16 runs emulated, slower than fp32, so a recipe's `amp: true` leaves it off there."""
    return device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in cpu_flags())
