"""Hostile input at the level of the commands (issue 15): generated recipe names, generated contents for
every file a run or study folder holds, generated output locations. Each case ends in exit 0 or one
line on stderr with exit 2, changes no file outside its output folder, and damages nothing already
written (every file is hashed before and after)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaincomp.cli import main

PROPS = settings(derandomize=True, deadline=None, max_examples=12, database=None,
                 suppress_health_check=list(HealthCheck))

# The cheapest real run: no baseline training, one post-training quantization stage.
RECIPE = {"name": "tiny", "seed": 0, "data": {"name": "digits", "limit_train": 200, "limit_test": 100,
                                               "val_size": 100},
          "model": {"name": "digits_cnn", "width": 0.25}, "baseline": {"epochs": 0},
          "chain": [{"technique": "quantize", "weight_bits": 8, "act_bits": 8, "mode": "ptq", "epochs": 0,
                     "calibration": "minmax", "calibration_batches": 1}]}

STUDY = {**RECIPE, "chain": [{"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 0},
                             {"technique": "quantize", "mode": "ptq", "epochs": 0}]}


def tree_hashes(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under root (links by their target text), except under `skip` and locks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirnames[:] = []
            continue
        for f in filenames:
            if f == ".lock":            # the one-writer lock a command leaves in its own output folder
                continue
            p = d / f
            out[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else \
                hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def outcome(argv: list[str], capsys) -> int:
    """Run the CLI; the only outcomes allowed are 0, or 2 with exactly one line starting 'chaincomp: error:'."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:       # argparse: usage errors are one line too
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("chaincomp"), err
        assert all(c >= " " for c in err[0]), repr(err[0])      # no control characters echoed
    return rc


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(root / "r.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


# ---- names ---------------------------------------------------------------------------------------

NAMES = st.one_of(st.sampled_from([".", "..", "...", ".x", "a/b", "../x", "a\x00b", "a" * 300, "x\x1b[31m",
                                   "runs", "-", "_"]),
                  st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40))


@PROPS
@given(NAMES)
def test_a_recipe_name_never_escapes_runs(tmp_path_factory, capsys, name):
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "results.json").write_text('{"mine": 1}')
    (cwd / "runs").mkdir()
    (cwd / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "name": name}, allow_unicode=True))
    before = tree_hashes(cwd, skip=cwd / "runs")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = outcome(["run", "r.yaml"], capsys)
    finally:
        os.chdir(old)
    assert tree_hashes(cwd, skip=cwd / "runs") == before
    if rc == 0:
        made = [p for p in (cwd / "runs").iterdir()]
        assert len(made) == 1 and made[0].name == name and (made[0] / "results.json").is_file()


# ---- files inside a run folder -------------------------------------------------------------------

JSON_SHAPES = st.one_of(
    st.just([]), st.just({}), st.just(None), st.just("text"), st.just(1.5),
    st.dictionaries(st.sampled_from(["format", "recipe_digest", "arch", "entry", "kind", "chain", "final",
                                     "baseline", "stages", "index", "name"]),
                    st.one_of(st.integers(-3, 3), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                              st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.none()),
                    max_size=6))
BYTES = st.one_of(st.binary(max_size=64), st.just(b"NaN"), st.just(b'{"a": 1, "a": 2}'), st.just(b"[" * 5000))


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != ".lock")


@PROPS
@given(st.data())
def test_any_file_of_a_run_folder_damaged(finished, tmp_path_factory, capsys, data):
    """resume, export and bench over a run folder with one file replaced by generated content."""
    run = tmp_path_factory.mktemp("case") / "run"
    shutil.copytree(finished, run)
    victim = data.draw(st.sampled_from(_files(run)))
    content = data.draw(st.one_of(JSON_SHAPES.map(lambda o: json.dumps(o).encode()), BYTES))
    (run / victim).write_bytes(content)
    outside = run.parent / "keep.txt"
    outside.write_text("user file")
    before = tree_hashes(run.parent, skip=run)
    command = data.draw(st.sampled_from([["run", str(run / "recipe.yaml"), "--resume", "--out", str(run)],
                                         ["export", str(run), "--out", str(run / "x" / "m.onnx")],
                                         ["bench", str(run), "--runs", "1", "--warmup", "0", "--no-peers",
                                          "--batch", "1"]]))
    if command[0] == "run" and victim == "recipe.yaml":
        command[1] = str(finished / "recipe.yaml")
    outcome(command, capsys)
    assert tree_hashes(run.parent, skip=run) == before


# ---- output locations ----------------------------------------------------------------------------

def _location(kind: str, root: Path) -> Path:
    if kind == "file":
        (root / "f").write_text("user data")
        return root / "f"
    if kind == "under_file":
        (root / "f").write_text("user data")
        return root / "f" / "out"
    if kind == "dangling":
        (root / "l").symlink_to(root / "nowhere" / "deeper")
        return root / "l"
    if kind == "devnull":
        return Path("/dev/null")
    if kind == "lock_folder":
        (root / "o" / ".lock").mkdir(parents=True)
        return root / "o"
    if kind == "lock_link":
        (root / "o").mkdir()
        (root / "victim").write_text("user data")
        (root / "o" / ".lock").symlink_to(root / "victim")
        return root / "o"
    if kind == "proc":
        return Path("/proc/self/chaincomp-out")
    raise AssertionError(kind)


KINDS = ["file", "under_file", "dangling", "devnull", "lock_folder", "lock_link", "proc"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["run", "exit", "fmc", "order", "search", "export"])
def test_an_output_that_cannot_be_written_is_refused_before_work(tmp_path, capsys, kind, command, finished):
    out = _location(kind, tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE if command == "run" else STUDY))
    before = tree_hashes(tmp_path)
    argv = {"run": ["run", str(tmp_path / "r.yaml"), "--out", str(out)],
            "exit": ["exit", "--out", str(out)],
            "fmc": ["fmc", "--out", str(out)],
            "order": ["order", str(tmp_path / "r.yaml"), "--out", str(out), "--workers", "0"],
            "search": ["search", str(tmp_path / "r.yaml"), "--out", str(out), "--workers", "0"],
            "export": ["export", str(finished), "--out", str(out)]}[command]
    assert outcome(argv, capsys) == 2
    assert tree_hashes(tmp_path) == before


# ---- a refused run does not block its retry ------------------------------------------------------

def test_a_refused_run_does_not_block_its_corrected_retry(tmp_path, capsys):
    bad = {**RECIPE, "model": {**RECIPE["model"], "weights": str(tmp_path / "missing.safetensors")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(RECIPE))
    assert outcome(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")], capsys) == 2
    assert not (tmp_path / "o" / "run.json").exists()
    assert outcome(["run", str(tmp_path / "good.yaml"), "--out", str(tmp_path / "o")], capsys) == 0


# ---- study folders -------------------------------------------------------------------------------

@PROPS
@given(st.one_of(JSON_SHAPES.map(lambda o: json.dumps(o).encode()), BYTES))
def test_a_damaged_study_json_is_one_line(tmp_path_factory, capsys, content):
    root = tmp_path_factory.mktemp("study")
    (root / "r.yaml").write_text(yaml.safe_dump(STUDY))
    (root / "o").mkdir()
    (root / "o" / "study.json").write_bytes(content)
    before = tree_hashes(root)
    assert outcome(["order", str(root / "r.yaml"), "--out", str(root / "o"), "--workers", "0"], capsys) == 2
    assert tree_hashes(root) == before


def test_a_study_name_too_long_for_its_chains_is_refused_by_check(tmp_path, capsys):
    rec = {**RECIPE, "name": "n" * 95, "chain": [{"technique": "prune"}, {"technique": "quantize"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    assert outcome(["check", str(tmp_path / "r.yaml"), "--kind", "order"], capsys) == 2
    assert outcome(["order", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--workers", "0"], capsys) == 2
    assert not (tmp_path / "o" / "baseline.safetensors").exists()
