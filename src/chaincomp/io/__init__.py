"""Files that cannot hurt: atomic writes, a one-writer lock, weights that never unpickle code, and
checks for everything hostile input can put between a command and the disk.

The functions every command uses for what it touches on disk (issue 15, docs/reliability.md):

- `checked_name` / `output_dir_for`: a name (from a recipe) that becomes a folder or file name;
- `prepare_output`: an output location, checked writable before any work starts;
- `read_model_json`: a JSON file the tool wrote, read back against a pydantic schema;
- `load_weights` / `save_weights`: safetensors with a checked header and finite tensors only.

Each failure is one `UserError` line naming the path and the fix.

Modules: `files` (atomic writes, JSON), `paths` (names, output locations, the lock), `weights`.
"""

from __future__ import annotations

from .files import (
    DAMAGED,
    M,
    MAX_JSON_BYTES,
    MAX_SAFETENSORS_HEADER,
    NAME_MAX,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_model_json,
    write_json,
)
from .paths import RunLock, checked_name, output_dir_for, prepare_output, safe_output_path
from .weights import (
    SAFETENSORS_DTYPES,
    SafetensorsHeader,
    SafetensorsTensor,
    check_finite,
    load_weights,
    read_safetensors_header,
    save_weights,
    weights_metadata,
)

__all__ = [
    "DAMAGED",
    "M",
    "MAX_JSON_BYTES",
    "MAX_SAFETENSORS_HEADER",
    "NAME_MAX",
    "RunLock",
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "SafetensorsTensor",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "checked_name",
    "load_weights",
    "output_dir_for",
    "prepare_output",
    "read_json",
    "read_model_json",
    "read_safetensors_header",
    "safe_output_path",
    "save_weights",
    "weights_metadata",
    "write_json",
]
