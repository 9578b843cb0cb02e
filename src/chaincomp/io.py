"""Files that cannot hurt: atomic writes, a one-writer lock, weights that never unpickle code, and
checks for everything hostile input can put between a command and the disk.

The functions every command uses for what it touches on disk (issue 15, docs/reliability.md):

- `checked_name` / `output_dir_for`: a name (from a recipe) that becomes a folder or file name;
- `prepare_output`: an output location, checked writable before any work starts;
- `read_model_json`: a JSON file the tool wrote, read back against a pydantic schema;
- `load_weights` / `save_weights`: safetensors with a checked header and finite tensors only.

Each failure is one `UserError` line naming the path and the fix.
"""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from . import faults
from .errors import NonFiniteError, UserError, one_line

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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half.
    A folder that cannot be written (read-only, a file in the way, disk full) is one UserError line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
    except (OSError, ValueError) as e:
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point("file_written")
        os.replace(tmp, path)    # replaces a symlink at `path` itself, never writes through it
    except OSError as e:
        _discard(tmp)
        raise _cannot_write(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


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


# ---- names that become paths --------------------------------------------------------------------


def checked_name(name: object, *, what: str = "name", longest_suffix: int = 0, name_max: int = NAME_MAX) -> str:
    """`name` if it can be one file or folder name, else a one-line UserError naming `what` (e.g.
    'name' or 'chain.2.name'). Refused: not a string, empty, `.`/`..` or any leading `.` (hidden,
    and the tool's own `.lock`/temp files start with one), a path separator, NUL or other control
    or invisible (format) characters, text that is not valid Unicode, and a name whose UTF-8 bytes
    plus `longest_suffix` (the longest suffix the caller appends, e.g. len('-baseline.safetensors'))
    exceed `name_max` (255 on Linux file systems). Why: a name of a recipe becomes runs/<name>,
    and `..` there wrote a run over the user's working directory."""
    if not isinstance(name, str):
        raise UserError(f"{what}: must be text, not {type(name).__name__}")
    shown = one_line(repr(name), 60)
    if not name:
        raise UserError(f"{what}: must not be empty")
    if name in (".", ".."):
        raise UserError(f"{what}: {shown} is not a usable name (it means this or the parent folder); "
                        "use letters, digits, '_', '-' or '.'")
    if name.startswith("."):
        raise UserError(f"{what}: {shown} must not start with '.' (a hidden name); start it with a letter or digit")
    seps = {"/", "\\"} | {s for s in (os.sep, os.altsep) if s}
    if any(c in seps for c in name):
        raise UserError(f"{what}: {shown} must not hold a path separator ('/' or '\\'); "
                        "give a plain name and choose the folder with --out")
    for c in name:
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise UserError(f"{what}: {shown} holds a control or invisible character (U+{ord(c):04X}); "
                            "use printable characters only")
    size = len(name.encode("utf-8"))
    if size + longest_suffix > name_max:
        room = name_max - longest_suffix
        extra = f" and the suffix the command adds ({longest_suffix} bytes)" if longest_suffix else ""
        raise UserError(f"{what}: {size} bytes is too long for a file name: the name{extra} must fit in "
                        f"{name_max} bytes; shorten it to at most {max(room, 0)} bytes")
    return name


def output_dir_for(name: object, parent: str | Path, *, what: str = "name", longest_suffix: int = 0) -> Path:
    """`parent/name`, the folder a command creates from a name (a recipe's `name`, a chain's, a
    trial's), guaranteed to lie directly inside `parent`: the name passes `checked_name`, and an
    existing symbolic link at `parent/name` is refused (writing there would leave `parent`). The
    path is returned as given (relative stays relative, for messages); nothing is created."""
    name = checked_name(name, what=what, longest_suffix=longest_suffix)
    parent = Path(parent)
    out = parent / name
    try:
        inside = out.resolve().parent == parent.resolve() if not out.is_symlink() else False
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{parent}: cannot be used as the folder of {what} ({_reason(e)})") from None
    if not inside:
        raise UserError(f"{out}: is a symbolic link; the folder made from {what} must lie inside {parent}: "
                        "remove the link or choose another name")
    return out


def safe_output_path(out_dir: str | Path, relative: str | Path) -> Path:
    """Resolve a path named in a recipe under the output folder; refuse one that escapes it."""
    try:
        out = Path(out_dir).resolve()
        p = (out / relative).resolve()
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{relative}: not a usable path ({_reason(e)})") from None
    if p != out and out not in p.parents:
        raise UserError(f"{relative}: output paths must stay inside {out}; use a relative path without '..'")
    return p


# ---- output locations -------------------------------------------------------------------------


def prepare_output(path: str | Path, kind: Literal["folder", "file"] = "folder", *, create: bool = True,
                   what: str = "--out") -> Path:
    """Check, before any work starts, that output `path` can be used; returns it as a Path.

    kind="folder": `path` is a folder, or a path where one can be made (created when `create`; with
    create=False nothing is made, the nearest existing folder is probed instead), and files can be
    written in it (a temp file is created and removed: os.access alone says yes to root for a
    chmod-0 folder and knows nothing of read-only mounts). Refused, each in one UserError line naming
    the path and the fix: an existing file, /dev/null or any other non-folder, a dangling symbolic
    link or a loop, a path under a file, a folder that cannot be written, and a `.lock` in it that is
    not a plain file (a folder, a link).
    kind="file": `path` is a file to be (re)written by an atomic rename: it must not be a folder or
    any non-regular file, and its folder is checked as above."""
    if kind not in ("folder", "file"):
        raise ValueError(f"kind must be 'folder' or 'file', not {kind!r}")
    if str(path) == "":
        raise UserError(f"{what}: an empty path; give a folder")
    p = Path(path)
    st = _stat_output(p, what)
    if kind == "file":
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UserError(f"{p}: is {_what_is(st.st_mode)}, not a file; give {what} the path of a file to write")
        prepare_output(p.parent, "folder", create=create, what=f"the folder of {p}")
        return p
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{p}: is {_what_is(st.st_mode)}, not a folder; give {what} a folder "
                        "(it is created if missing)")
    if st is None:
        base = _existing_ancestor(p, what)
        missing = p.absolute().parts[len(base.parts):]
        if ".." in missing:     # makedirs would create the folder before the '..' too: refuse, change nothing
            raise UserError(f"{p}: '..' after a folder that does not exist; give {what} a path without '..'")
        if not create:
            _probe_writable(base, p, what)
            return p
        try:
            os.makedirs(p, exist_ok=True)
        except (OSError, ValueError) as e:
            raise UserError(f"{p}: cannot create this folder ({_reason(e)}); give {what} a folder you can "
                            "write") from None
    _probe_writable(p, p, what)
    _check_lock_file(p)
    return p


def _stat_output(p: Path, what: str) -> os.stat_result | None:
    """os.stat of `p` following links (None if nothing is there); a dangling link, a loop, a path
    through a file or a name the file system refuses is a UserError."""
    try:
        return os.stat(p)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        blocker, kind = _file_in_the_way(p)
        raise UserError(f"{p}: cannot be created: {blocker} is {kind}, not a folder; "
                        f"give {what} a path under a folder") from None
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno == errno.ELOOP:
            raise UserError(f"{p}: is a loop of symbolic links; remove it or give {what} another path") from None
        raise UserError(f"{p}: cannot be used as {what} ({_reason(e)})") from None
    if os.path.islink(p):
        target = os.readlink(p)
        raise UserError(f"{p}: is a symbolic link to {one_line(target, 200)}, which does not exist; remove the "
                        f"link or give {what} another path")
    return None


def _file_in_the_way(p: Path) -> tuple[Path, str]:
    """The first component of `p` that exists and is not a folder, and what it is."""
    for a in reversed([p, *p.parents]):
        try:
            mode = os.stat(a).st_mode
        except OSError:
            break
        if not stat.S_ISDIR(mode):
            return a, _what_is(mode)
    return p, "not a folder"


def _existing_ancestor(p: Path, what: str) -> Path:
    """The nearest existing folder above a missing `p` (refusing a non-folder in the way)."""
    for a in p.absolute().parents:
        try:
            st = os.stat(a)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UserError(f"{p}: cannot be created ({_reason(e)} at {a}); give {what} another path") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{p}: cannot be created: {a} is {_what_is(st.st_mode)}, not a folder; "
                            f"give {what} a path under a folder")
        return a
    return Path("/")


def _probe_writable(folder: Path, p: Path, what: str) -> None:
    """Create and remove a temp file in `folder`: the only test that tells the truth for root, for
    read-only mounts and for ACLs. A failure is a UserError naming `p` and the OS's reason."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".chaincomp-probe-", dir=folder)
    except (OSError, ValueError) as e:
        where = "" if folder == p else f" (in {folder})"
        raise UserError(f"{p}: cannot write here{where}: {_reason(e)}; give {what} a folder you can write, or "
                        "fix its permissions") from None
    os.close(fd)
    _discard(tmp)


def _check_lock_file(folder: Path) -> None:
    lock = folder / ".lock"
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{lock}: cannot be checked ({_reason(e)}); remove it") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{lock}: is {_what_is(st.st_mode)}, not chaincomp's lock file; remove it "
                        f"(no chaincomp command is using it) and rerun")


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


# ---- weights --------------------------------------------------------------------------------------

# The safetensors dtypes the tool loads: the ones torch computes with and can check for NaN.
SAFETENSORS_DTYPES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                                      "I8": 1, "U8": 1, "BOOL": 1}
_Nat = Annotated[int, Field(ge=0, le=2**62, strict=True)]


class SafetensorsTensor(BaseModel):
    """One tensor's entry of a safetensors header: the schema io.py reads it with."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
    shape: list[_Nat] = Field(max_length=16)
    data_offsets: tuple[_Nat, _Nat]


_TENSORS = TypeAdapter(dict[str, SafetensorsTensor])
_METADATA = TypeAdapter(dict[str, str])


class SafetensorsHeader(BaseModel):
    """A checked safetensors header: what `read_safetensors_header` returns."""

    tensors: dict[str, SafetensorsTensor]
    metadata: dict[str, str]
    data_bytes: int


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """The header of safetensors file `path`, checked before a byte of tensor data is touched: the
    8-byte length (within the file and MAX_SAFETENSORS_HEADER), a JSON object with no key twice,
    each tensor's dtype (one torch computes with), shape and offsets (the dtype's size times the
    shape, inside the data, no overlap or gap), and string metadata. Any fault is one UserError line."""
    path = Path(path)
    hint = "the file is damaged or not safetensors; give weights saved by chaincomp or safetensors"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: is {_what_is(st.st_mode)}, not a weights file; give a .safetensors file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: {len(head)} bytes is too short for a safetensors file; {hint}")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER or n > size - 8 or n < 2:
                raise UserError(f"{path}: header length {n} does not fit the file ({size} bytes); {hint}")
            raw = f.read(n)
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found; give the path of a .safetensors file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({_reason(e)})") from None
    if len(raw) != n:
        raise UserError(f"{path}: cut short in its header; {hint}")
    header = _parse_json(path, raw.rstrip(b" "), allow_nan=False, hint=hint)
    if not isinstance(header, dict):
        raise UserError(f"{path}: its header is a JSON {_json_kind(header)}, not an object; {hint}")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    try:
        metadata = _METADATA.validate_python(meta, strict=True)
        tensors = _TENSORS.validate_python(header)
    except ValidationError as e:
        raise UserError(f"{path}: header {_validation_line(e)}; {hint}") from None
    data_bytes = size - 8 - n
    spans = []
    for name, t in tensors.items():
        begin, end = t.data_offsets
        count = math.prod(t.shape)
        if end < begin or end > data_bytes or end - begin != count * SAFETENSORS_DTYPES[t.dtype]:
            raise UserError(f"{path}: tensor {one_line(repr(name), 60)} has offsets {begin}..{end} that do not "
                            f"match its shape {t.shape} and dtype {t.dtype} in {data_bytes} bytes of data; {hint}")
        spans.append((begin, end))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise UserError(f"{path}: tensor data overlaps or leaves a gap at byte {min(begin, pos)}; {hint}")
        pos = end
    if pos != data_bytes:
        raise UserError(f"{path}: {data_bytes - pos} bytes after the last tensor; {hint}")
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_bytes=data_bytes)


def check_finite(state: dict[str, torch.Tensor], path: str | Path, *, writing: bool = False) -> None:
    """Refuse tensors holding NaN or infinity (NonFiniteError naming `path` and the first such tensor).
    Integer tensors are always finite. Why: NaN weights run, give chance-level results and, once
    checkpointed, poison every resume."""
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            shown = one_line(repr(name), 80)
            if writing:
                raise NonFiniteError(f"{path}: refused to save weights: tensor {shown} holds {nan} NaN and {inf} "
                                     "infinite values (training diverged?); nothing was written, the last good "
                                     "checkpoint is kept", path=str(path), tensor=name)
            raise NonFiniteError(f"{path}: tensor {shown} holds {nan} NaN and {inf} infinite values; these "
                                 "weights are damaged or diverged: give weights of a healthy model",
                                 path=str(path), tensor=name)


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Weights go through safetensors (no code in the file), written atomically. Non-finite tensors
    are refused before anything is written (NonFiniteError), so nothing NaN is ever checkpointed."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    check_finite(tensors, path, writing=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
        os.close(fd)
    except (OSError, ValueError) as e:
        raise _cannot_write(path, e) from None
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point("weights_written")
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise _cannot_write(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling: safetensors (header checked first by
    `read_safetensors_header`), or torch.load(weights_only=True) for .pt/.pth/.bin. Tensors holding
    NaN or infinity are refused (NonFiniteError naming the file and tensor)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as weights ({_reason(e)}); give the path of a .safetensors "
                        "file") from None
    if st is None:
        raise UserError(f"{path}: weights file not found; give the path of a .safetensors file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: is {_what_is(st.st_mode)}, not a weights file; give the path of a .safetensors file")
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
        check_finite(obj, path)
        return obj
    read_safetensors_header(path)
    try:
        state = load_file(str(path))
    except BaseException as e:  # noqa: BLE001 - a Rust panic (PanicException) is a BaseException
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        raise UserError(f"{path}: not a readable safetensors file ({one_line(e, 120)})") from None
    check_finite(state, path)
    return state


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored with safetensors weights ({} if none or unreadable): lets a resumed
    command tell whether the weights in its folder were made with the same settings."""
    try:
        return dict(read_safetensors_header(path).metadata)
    except UserError:  # a damaged file simply does not match
        return {}


# ---- one writer per folder ------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on an output folder so that two runs never write the same files.

    Uses fcntl.flock on DIR/.lock: the kernel drops it when the process dies (even SIGKILL),
    so a crashed run never leaves a stale lock behind. The lock file is opened without following
    a symbolic link (a `.lock` pointing at a user's file would otherwise be truncated), and a
    folder that cannot hold it (a file, read-only, `.lock` a folder) is one UserError line.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            try:
                kind = _what_is(os.lstat(folder).st_mode)
            except OSError:
                kind = None
            if kind == "a symbolic link" and not folder.exists():
                raise UserError(f"{folder}: is a symbolic link to a folder that does not exist; remove the link "
                                "or give --out another folder") from None
            blocker = f"is {kind}" if kind else f"cannot be created ({_file_in_the_way(folder)[0]} is in the way)"
            raise UserError(f"{folder}: {blocker}, not a folder; give --out a folder") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: cannot create this folder ({_reason(e)}); give --out a folder you can "
                            "write") from None
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            try:
                kind = _what_is(os.lstat(self.path).st_mode)
            except OSError:
                kind = None
            if kind and kind != "a file":
                raise UserError(f"{self.path}: is {kind}, not chaincomp's lock file; remove it and rerun") from None
            raise UserError(f"{self.path}: cannot create the lock file ({_reason(e)}); give --out a folder you "
                            "can write") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UserError(f"{self.path}: is {_what_is(mode)}, not chaincomp's lock file; remove it and rerun")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 20, 0).decode(errors="replace").strip()
                pid = f"pid {holder}, " if holder.isdigit() else ""
                raise UserError(f"{folder}: another chaincomp command is writing to this folder "
                                f"({pid}lock {self.path}); wait for it to finish or use another output folder") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            os.close(fd)
            raise UserError(f"{self.path}: cannot lock the output folder ({_reason(e)}); give --out another "
                            "folder") from None
        except BaseException:
            os.close(fd)
            raise
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
