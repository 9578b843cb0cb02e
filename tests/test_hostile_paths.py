"""Issue 15, classes 1 and 5: names that become paths, and output locations that cannot be written.

`io.output_dir_for` (every folder made from a recipe name) must give a path directly inside its
parent or one UserError line; `io.prepare_output` (every output location, before any work) must
give a writable folder or one UserError line; `io.RunLock` must never write through a link. Each
property case runs in a fresh temp tree and checks, by hashing every entry before and after, that
nothing outside the output folder changed."""
import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chaincomp import io
from chaincomp.errors import UserError

PROPS = settings(derandomize=True, deadline=None, max_examples=100, database=None,
                 suppress_health_check=list(HealthCheck))
ROOT = os.geteuid() == 0


def one_line(e: BaseException) -> str:
    s = str(e)
    assert s and "\n" not in s and "\x1b" not in s and "\x00" not in s, repr(s)
    return s


def snapshot(top: str | Path) -> dict[str, tuple]:
    """Every entry under `top`, links not followed: kind, mode, and content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st_.st_mode), hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode))
    return out


# ---- names -> paths ----

NASTY = [".", "..", "...", "./a", "a/..", "/", "/etc", "~", "..\\x", "a\x00", "\x1b[31m", "a\nb", "é" * 127,
         "é" * 128, "x" * 255, "x" * 256, "-rf", " ", "a\u202eb", "a\u2028b", "\ud800", "runs", "CON", "a b"]
names = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from(list("aZ09_.-/\\\x00\n\x1b\x7f\x85 é€😀\u202e\u200b")), max_size=300),
    st.sampled_from(NASTY),
)


@PROPS
@given(names, st.sampled_from([0, 7, 40]))
def test_a_name_becomes_a_folder_inside_its_parent_or_one_line(name, suffix):
    with tempfile.TemporaryDirectory() as d:
        parent = Path(d) / "runs"
        parent.mkdir()
        (Path(d) / "results.json").write_text("the user's own file")
        before = snapshot(d)
        try:
            out = io.output_dir_for(name, parent, longest_suffix=suffix)
        except UserError as e:
            assert one_line(e).startswith("name: ")
            assert snapshot(d) == before
            return
        assert out.parent == parent and out.name == name
        assert out.resolve().parent == parent.resolve()
        assert not name.startswith(".") and "/" not in name and "\x00" not in name
        assert len(name.encode()) + suffix <= io.NAME_MAX
        assert snapshot(d) == before                         # nothing created
        out.mkdir()                                          # the file system takes the name ...
        if suffix:
            (parent / (name + "s" * suffix)).write_text("x")     # ... and the longest suffix with it
        assert sorted(os.listdir(parent)) == sorted({name, name + "s" * suffix})
        assert snapshot(d)["results.json"] == before["results.json"]


@pytest.mark.parametrize("name,needle", [
    (".", "parent folder"), ("..", "parent folder"), (".x", "must not start with '.'"),
    ("a/b", "path separator"), ("a\\b", "path separator"), ("a\x00b", "U+0000"), ("a\x1bb", "U+001B"),
    ("a\u202eb", "U+202E"), ("", "must not be empty"), (3, "must be text"), ("x" * 256, "256 bytes"),
])
def test_checked_name_refusals(name, needle):
    with pytest.raises(UserError) as ei:
        io.checked_name(name, what="chain.0.name")
    msg = one_line(ei.value)
    assert msg.startswith("chain.0.name: ") and needle in msg, msg


def test_longest_suffix_counts_towards_the_limit():
    assert io.checked_name("x" * 235, longest_suffix=20) == "x" * 235
    with pytest.raises(UserError, match="at most 235 bytes"):
        io.checked_name("x" * 236, longest_suffix=20)
    with pytest.raises(UserError, match="128 bytes"):              # bytes, not characters
        io.checked_name("é" * 64, name_max=127)


def test_a_link_in_place_of_the_named_folder_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        io.output_dir_for("tiny", tmp_path / "runs")
    assert io.output_dir_for("other", tmp_path / "runs") == tmp_path / "runs" / "other"


def test_a_parent_that_is_a_link_is_fine(tmp_path):
    (tmp_path / "big_disk").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "big_disk")
    assert io.output_dir_for("tiny", tmp_path / "runs") == tmp_path / "runs" / "tiny"


# ---- output locations ----

KINDS = ["dir", "file", "fifo", "chmod0_dir", "link_dir", "link_file", "link_missing", "link_loop",
         "link_outside_dir", "link_outside_file", "link_devnull", "dir_lock_dir", "dir_lock_link", "dir_lock_fifo",
         "dir_lock_file", "ro_dir"]


def build(world: Path, outside: Path, name: str, kind: str) -> None:
    p = world / name
    if kind in ("dir", "chmod0_dir", "ro_dir") or kind.startswith("dir_lock"):
        p.mkdir()
        (p / "kept.txt").write_text(f"kept {name}")
        if kind == "dir_lock_dir":
            (p / ".lock").mkdir()
        elif kind == "dir_lock_link":
            (p / ".lock").symlink_to(outside / "victim.txt")
        elif kind == "dir_lock_fifo":
            os.mkfifo(p / ".lock")
        elif kind == "dir_lock_file":
            (p / ".lock").write_text("12345")
        if kind == "chmod0_dir":
            p.chmod(0)
        elif kind == "ro_dir":
            p.chmod(0o555)
    elif kind == "file":
        p.write_text(f"user file {name}")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "link_dir":
        (world / f"{name}_target").mkdir()
        p.symlink_to(world / f"{name}_target")
    elif kind == "link_file":
        p.symlink_to(outside / "victim.txt")
    elif kind == "link_missing":
        p.symlink_to(world / "no_such_thing")
    elif kind == "link_loop":
        p.symlink_to(p)
    elif kind == "link_outside_dir":
        p.symlink_to(outside / "victim_dir")
    elif kind == "link_outside_file":
        p.symlink_to(outside / "victim_dir" / "victim2.txt")
    elif kind == "link_devnull":
        p.symlink_to("/dev/null")


def _restore_modes(top: Path) -> None:
    for dirpath, dirnames, _ in os.walk(top):
        for n in dirnames:
            q = os.path.join(dirpath, n)
            if not os.path.islink(q):
                os.chmod(q, 0o755)


def _allowed(rel: str, top: Path, target: Path) -> bool:
    """Changes prepare_output/RunLock may make: inside the output folder, or the folders leading to it."""
    real = Path(os.path.realpath(top / rel))
    tgt = Path(os.path.realpath(target))
    return real == tgt or tgt in real.parents or real in tgt.parents


@PROPS
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(KINDS), min_size=1, max_size=3),
       st.sampled_from(["a", "b", "c", "new"]),
       st.lists(st.sampled_from(["a", "new", "..", ".", "kept.txt", ".lock"]), max_size=2),
       st.booleans())
def test_an_output_location_is_usable_or_one_line(entries, first, rest, create):
    parts = [first, *rest]
    with tempfile.TemporaryDirectory() as d:
        top = Path(d)
        world, outside = top / "world", top / "outside"
        world.mkdir()
        (outside / "victim_dir").mkdir(parents=True)
        (outside / "victim.txt").write_text("the user's file")
        (outside / "victim_dir" / "victim2.txt").write_text("another user file")
        for name, kind in entries.items():
            build(world, outside, name, kind)
        target = world.joinpath(*parts)
        before = snapshot(top)
        try:
            try:
                out = io.prepare_output(target, create=create)
            except UserError as e:
                msg = one_line(e)
                event("refused")
                assert any(str(a) in msg for a in [target, *target.parents]), msg
                assert snapshot(top) == before
                lexists, isdir = os.path.lexists(target), os.path.isdir(target)
                if ROOT and isdir and not os.path.lexists(target / ".lock"):
                    raise AssertionError(f"a writable folder refused: {msg}")
                return
            assert out == target
            event("accepted")
            if os.path.lexists(target) and not os.path.isdir(target):
                raise AssertionError("a non-folder was accepted")
            if create or os.path.isdir(target):
                assert os.path.isdir(target)
                with io.RunLock(target):
                    io.write_json(target / "probe.json", {"ok": True})
                assert stat.S_ISREG(os.lstat(target / ".lock").st_mode)
            else:
                assert not os.path.lexists(target)            # create=False makes nothing
            after = snapshot(top)
            for rel, v in before.items():
                assert after.get(rel) == v or _allowed(rel, top, target), rel
            for rel in after.keys() - before.keys():
                assert _allowed(rel, top, target), rel
            assert (outside / "victim.txt").read_text() == "the user's file"
        finally:
            _restore_modes(top)


@pytest.mark.parametrize("kind,needle", [
    ("file", "is a file, not a folder"), ("fifo", "FIFO"), ("link_missing", "does not exist"),
    ("link_loop", "loop of symbolic links"), ("link_devnull", "is a device"), ("link_file", "is a file"),
    ("dir_lock_dir", ".lock: is a folder"), ("dir_lock_link", ".lock: is a symbolic link"),
    ("dir_lock_fifo", ".lock: is a FIFO"),
])
def test_each_unusable_location_has_its_message(tmp_path, kind, needle):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("the user's file")
    build(tmp_path, tmp_path / "outside", "o", kind)
    with pytest.raises(UserError) as ei:
        io.prepare_output(tmp_path / "o")
    assert needle in one_line(ei.value)


def test_dotdot_after_a_missing_folder_changes_nothing(tmp_path):
    """makedirs('a/new/../x') would make 'a/new' on the way: refused before anything is made."""
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="'..' after a folder that does not exist"):
        io.prepare_output(tmp_path / "a" / "new" / ".." / "x")
    assert os.listdir(tmp_path / "a") == []
    assert io.prepare_output(tmp_path / "a" / ".." / "b") == tmp_path / "a" / ".." / "b"   # '..' of a real folder


def test_dev_null_and_paths_under_files(tmp_path):
    for p, needle in [("/dev/null", "/dev/null: is a device, not a folder"),
                      ("/dev/null/x", "/dev/null is a device"),
                      (str(tmp_path / "f" / "x" / "y"), "f is a file"),
                      ("", "an empty path"),
                      (str(tmp_path / ("x" * 300)), "File name too long"),
                      (str(tmp_path / "a\x00b"), "cannot be used as --out")]:
        (tmp_path / "f").write_text("user")
        with pytest.raises(UserError) as ei:
            io.prepare_output(p)
        assert needle in one_line(ei.value), (p, str(ei.value))


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    # /proc/self is a folder nobody (root included) can create files in: the real error is reported
    with pytest.raises(UserError, match="/proc/self: cannot write here"):
        io.prepare_output("/proc/self", create=False)
    with pytest.raises(UserError, match="cannot create this folder"):
        io.prepare_output("/proc/self/out")
    # a read-only mount, simulated where the probe writes (root cannot chmod its way to one)
    (tmp_path / "ro").mkdir()

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(io.paths.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="ro: cannot write here: Read-only file system"):
        io.prepare_output(tmp_path / "ro")
    with pytest.raises(UserError, match=r"new: cannot write here \(in .*\): Read-only"):
        io.prepare_output(tmp_path / "ro" / "new", create=False)


@pytest.mark.skipif(ROOT, reason="root writes into chmod-0 folders; the probe tells the truth for root")
def test_a_read_only_folder_is_refused_for_a_normal_user(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            io.prepare_output(ro)
    finally:
        ro.chmod(0o755)


def test_chmod_0_folder_for_root_is_accepted_because_it_is_writable(tmp_path):
    d = tmp_path / "zero"
    d.mkdir()
    d.chmod(0)
    try:
        if ROOT:
            assert io.prepare_output(d) == d
            io.write_json(d / "x.json", {})                      # and indeed it is
        else:
            with pytest.raises(UserError, match="Permission denied"):
                io.prepare_output(d)
    finally:
        d.chmod(0o755)


def test_an_output_file_location(tmp_path):
    (tmp_path / "dir").mkdir()
    assert io.prepare_output(tmp_path / "new" / "a.onnx", "file") == tmp_path / "new" / "a.onnx"
    with pytest.raises(UserError, match="is a folder, not a file"):
        io.prepare_output(tmp_path / "dir", "file")
    with pytest.raises(UserError, match="is a device, not a file"):
        io.prepare_output("/dev/null", "file")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="f is a file, not a folder"):
        io.prepare_output(tmp_path / "f" / "a.onnx", "file")


# ---- the lock and atomic writes ----

def test_the_lock_never_writes_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link, not chaincomp's lock file"):
        io.RunLock(tmp_path / "o").acquire()
    assert victim.read_text() == "precious"
    (tmp_path / "o" / ".lock").unlink()
    (tmp_path / "o" / ".lock").symlink_to(tmp_path / "missing")        # a dangling one is not created either
    with pytest.raises(UserError, match="symbolic link"):
        io.RunLock(tmp_path / "o").acquire()
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("setup,needle", [
    (lambda o: o.write_text("user"), "o: is a file, not a folder"),
    (lambda o: o.symlink_to("/dev/null"), "o: is a symbolic link, not a folder"),
    (lambda o: o.symlink_to(o.parent / "missing"), "symbolic link to a folder that does not exist"),

    (lambda o: (o.mkdir(), (o / ".lock").mkdir()), ".lock: is a folder"),
    (lambda o: (o.mkdir(), os.mkfifo(o / ".lock")), ".lock: is a FIFO"),
])
def test_runlock_refusals_are_one_line(tmp_path, setup, needle):
    setup(tmp_path / "o")
    with pytest.raises(UserError) as ei:
        io.RunLock(tmp_path / "o").acquire()
    assert needle in one_line(ei.value)


def test_runlock_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"o: cannot be created \(.*f is in the way\)"):
        io.RunLock(tmp_path / "f" / "o").acquire()
    assert (tmp_path / "f").read_text() == "x"


def test_writes_into_unusable_places_are_one_line_and_leave_no_temp(tmp_path):
    (tmp_path / "results.json").mkdir()
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "results.json", tmp_path / "file" / "x.json"):
        with pytest.raises(UserError, match="cannot write"):
            io.write_json(target, {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["file", "results.json"]
    assert os.listdir(tmp_path / "results.json") == []


def test_a_long_file_name_still_gets_an_atomic_temp(tmp_path):
    p = tmp_path / ("r" * 250 + ".json")
    io.write_json(p, {"a": 1})
    assert io.read_json(p) == {"a": 1}
