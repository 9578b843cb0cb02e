"""One module per technique, all with the same contract (`base.Stage`), each registering itself in
`registry`. A stage never imports another stage.

Every module of this package (but `base` and `registry`) is imported here, so adding a technique is
adding one file; see docs/architecture.md for an example.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Context, Stage, StageConfig
from .registry import STAGES, configs, letters, make_stage, rebuild, register, replay, settle

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Context", "Stage", "StageConfig", "STAGES", "configs", "letters", "make_stage", "rebuild", "register", "replay", "settle"]
