"""Atomic writes and JSON the tool wrote, read back against a schema (one line per way it can be wrong)."""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from .. import faults
from ..errors import NonFiniteError, UserError, one_line

NAME_MAX = 255                    # bytes in one file name (ext4, xfs, btrfs, tmpfs)
MAX_JSON_BYTES = 64 * 1024 * 1024  # the largest JSON the tool writes (a big search study) is well under
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024   # a 1,000-layer model's header is under 1 MiB



def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


# ---- errors -----------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    """The operating system's words for an OSError ('Permission denied'), else the exception's name."""
    return getattr(e, "strerror", None) or type(e).__name__


def _cannot_write(path: Path, e: BaseException) -> UserError:
    return UserError(f"{path}: cannot write ({_reason(e)}); check that its folder exists, is a folder and is "
                     "writable, and that the disk has room")


def _what_is(mode: int) -> str:
    """'a file', 'a device'... for the messages that refuse a path of the wrong kind."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# ---- atomic writes ------------------------------------------------------------------------------


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in `path`'s folder (so the rename is atomic). Its name is capped: a long `path.name`
    plus the temp decorations must still fit in NAME_MAX."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    return fd, tmp


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextmanager
def replaced_atomically(path: Path, fault_point: str) -> Iterator[str]:
    """A temporary file beside `path` for the caller to fill; then fsync and rename over `path`, so readers
    see the old file or the new one, never half. On any failure the temporary file is removed, and a
    folder that cannot be written (read-only, a file in the way, disk full) is one UserError line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
        os.close(fd)
    except (OSError, ValueError) as e:
        raise _cannot_write(path, e) from None
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point(fault_point)
        os.replace(tmp, path)    # replaces a symlink at `path` itself, never writes through it
    except OSError as e:
        _discard(tmp)
        raise _cannot_write(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`replaced_atomically`)."""
    path = Path(path)
    with replaced_atomically(path, "file_written") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, *, finite: bool = False) -> None:
    """Write `obj` as JSON, atomically. With finite=True a NaN or infinity anywhere is refused
    (NonFiniteError naming the key) instead of being written as the non-JSON `NaN`/`Infinity`."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=not finite)
    except ValueError:
        if not finite:
            raise
        where = _first_non_finite(obj)
        raise NonFiniteError(f"{path}: refused to write {where or 'a value'}: not a finite number (NaN or "
                             "infinity); the result it belongs to is not valid", path=str(path)) from None
    atomic_write_text(path, text + "\n")


def _first_non_finite(obj: Any, at: str = "") -> str | None:
    """The dotted key of the first NaN/infinity in a JSON-like object (for the message)."""
    stack = [(obj, at)]
    while stack:
        x, where = stack.pop()
        if hasattr(x, "item") and not isinstance(x, (dict, list, tuple)):
            try:
                x = x.item()
            except (TypeError, ValueError, RuntimeError):
                continue
        if isinstance(x, float) and not math.isfinite(x):
            return where or "the value"
        if isinstance(x, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(list(x.items())))
        elif isinstance(x, (list, tuple)):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in reversed(list(enumerate(x))))
    return None


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- JSON the tool wrote, read back -------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)

DAMAGED = "the run folder is damaged (edited, cut short or written by another version); remove the file or " \
          "the folder and rerun"


def _read_bytes(path: Path, max_bytes: int, what: str, hint: str, missing_hint: str = "") -> bytes:
    """The bytes of regular file `path`, at most `max_bytes`; never opens a FIFO or device (a read
    would hang or never end). Every failure is one UserError line."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: is {_what_is(st.st_mode)}, not a {what}; {hint}")
        if st.st_size > max_bytes:
            raise UserError(f"{path}: {st.st_size} bytes is too large for a {what} (at most {max_bytes}); {hint}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{path}: not a regular file; {hint}")
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found" + (f"; {missing_hint}" if missing_hint else "")) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({_reason(e)}); {hint}") from None
    if len(data) > max_bytes:
        raise UserError(f"{path}: too large for a {what} (over {max_bytes} bytes); {hint}")
    return data


class _NonFiniteJSON(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFiniteJSON(name)


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):     # 1e999 parses to inf
        raise _NonFiniteJSON(text)
    return x


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def _parse_json(path: Path, data: bytes, *, allow_nan: bool, hint: str, strict_keys: bool = True) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); {hint}") from None
    kw: dict[str, Any] = {} if allow_nan else {"parse_constant": _refuse_constant, "parse_float": _finite_float}
    if strict_keys:
        kw["object_pairs_hook"] = _no_duplicates
    try:
        return json.loads(text, **kw)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {hint}") from None
    except _NonFiniteJSON as e:
        raise UserError(f"{path}: holds {one_line(str(e), 20)}, which is not a finite number; {hint}") from None
    except _DuplicateKey as e:
        raise UserError(f"{path}: key {one_line(repr(str(e)), 60)} appears twice; {hint}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a file chaincomp wrote; {hint}") from None
    except (ValueError, OverflowError) as e:     # e.g. an integer over 4,300 digits
        raise UserError(f"{path}: cannot be read as JSON ({one_line(e, 80)}); {hint}") from None


def read_json(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Any JSON value from `path` (NaN/Infinity accepted: the tool writes them for undefined ratios).
    Prefer `read_model_json`, which also checks the shape; this one leaves that to the caller."""
    path = Path(path)
    hint = "the file is damaged, remove it or rerun"
    return _parse_json(path, _read_bytes(path, max_bytes, "JSON file", hint), allow_nan=True, hint=hint,
                       strict_keys=False)


def read_model_json(path: str | Path, model: type[M], *, hint: str = DAMAGED, allow_nan: bool = False,
                    max_bytes: int = MAX_JSON_BYTES) -> M:
    """Read a JSON file the tool wrote and validate it against pydantic `model`; returns the instance.

    Every way the file can be wrong is one UserError line naming the file, the field and `hint` (by
    default: the run folder is damaged, remove it and rerun): missing, not a regular file (a FIFO is
    never opened), over `max_bytes`, not UTF-8, not JSON, a key twice, NaN/Infinity (unless
    `allow_nan`), nested too deeply, or a wrong shape (a list for an object, a missing key, a wrong
    type: whatever `model` says). Why: a run folder is input too; a checkpoint JSON that is a list
    must not end in a traceback in the middle of a resume."""
    path = Path(path)
    obj = _parse_json(path, _read_bytes(path, max_bytes, "JSON file", hint, missing_hint=hint), allow_nan=allow_nan,
                      hint=hint)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a JSON {_json_kind(obj)} where an object {{...}} belongs; {hint}")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise UserError(f"{path}: {_validation_line(e)}; {hint}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}); {hint}") from None


def _json_kind(obj: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false",
            type(None): "null"}.get(type(obj), type(obj).__name__)


def _validation_line(e: ValidationError) -> str:
    """The first error of a pydantic ValidationError as 'key.0.sub: message (got X)'."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "the object"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "missing"
    elif err["type"] == "extra_forbidden":
        msg = "not a key this file has"
    got = err.get("input")
    got_s = "" if err["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {one_line(repr(got), 40)})"
    more = f" [+{len(e.errors()) - 1} more]" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{got_s}{more}"
