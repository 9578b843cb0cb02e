"""Files that cannot hurt: atomic writes, a one-writer lock, and weights that never unpickle code."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from . import faults
from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point("file_written")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the file is damaged, remove it or rerun") from None


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Weights go through safetensors (no code in the file), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point("weights_written")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling: safetensors, or torch.load(weights_only=True) for .pt/.pth."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found; give the path of a .safetensors file")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # refusing a pickle that carries code lands here
            raise UserError(f"{path}: refused to load ({type(e).__name__}): only plain tensors are accepted; "
                            "convert the file to .safetensors") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{path}: expected a dict of tensors (a state_dict)")
        return obj
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored with safetensors weights ({} if none or unreadable): lets a resumed
    command tell whether the weights in its folder were made with the same settings."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a damaged file simply does not match
        return {}


def safe_output_path(out_dir: str | Path, relative: str | Path) -> Path:
    """Resolve a path named in a recipe under the output folder; refuse one that escapes it."""
    out = Path(out_dir).resolve()
    p = (out / relative).resolve()
    if p != out and out not in p.parents:
        raise UserError(f"{relative}: output paths must stay inside {out}; use a relative path without '..'")
    return p


class RunLock:
    """An exclusive lock on an output folder so that two runs never write the same files.

    Uses fcntl.flock on DIR/.lock: the kernel drops it when the process dies (even SIGKILL),
    so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f"pid {holder}, " if holder.isdigit() else ""
            raise UserError(f"{self.path.parent}: another chaincomp command is writing to this folder "
                            f"({pid}lock {self.path}); wait for it to finish or use another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def locked(out_dir: str | Path) -> Iterator[RunLock]:
    with RunLock(out_dir) as lock:
        yield lock
