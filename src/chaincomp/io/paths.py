"""Names that become paths, output locations checked before work starts, and one writer per folder."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Literal

from ..errors import UserError, one_line
from .files import NAME_MAX, _discard, _reason, _what_is

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


