"""The reliability promises for every command that writes an output folder, through the real executable:

- one writer: with the folder's lock held, the command exits 2 with one line naming the folder and
  its lock, and leaves every file of the folder byte for byte as it was;
- kill and resume: SIGKILL at a named kill point (chaincomp/faults.py), rerun with --resume, and the
  result file equals an uninterrupted run's (wall-clock figures aside: timings, latencies, dates).

`run` has the same tests in test_reliability.py (five kill points)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from chaincomp.io import RunLock
from conftest import tiny_recipe

CHAIN = {"name": "tiny", "seed": 0, "threads": 1, "data": {"name": "digits", "limit_train": 200, "limit_test": 100},
         "model": {"name": "digits_cnn", "width": 0.5}, "baseline": {"epochs": 2, "batch_size": 32},
         "chain": [{"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64},
                   {"technique": "quantize", "weight_bits": 4, "act_bits": 8, "calibration": "minmax",
                    "calibration_batches": 1, "epochs": 1, "batch_size": 64}]}
EXIT = {"name": "tiny", "seed": 0, "threads": 1, "data": {"name": "digits", "limit_train": 200, "limit_test": 60},
        "model": {"name": "digits_vgg", "width": 0.25}, "baseline": {"epochs": 1, "batch_size": 64},
        "exits": {"epochs": 1, "batch_size": 64}, "predictive": {"sweep_points": 4, "start_block": 1},
        "energy": {"controller": "dry_run"}, "runtime": {"limit": 12, "warmup": 1}}
_TASK = {"data": {"name": "digits", "limit_train": 200, "limit_test": 60},
         "model": {"name": "digits_cnn", "width": 0.25}, "baseline": {"epochs": 1, "batch_size": 64}}
FMC = {"name": "tiny", "seed": 0, "threads": 1, "tasks": [{**_TASK, "bits_in": [8]}, {**_TASK, "bits_in": [16]}],
       "throughput": {"batch": 4, "repeats": 1}}

RESULT = {"order": "order.json", "search": "search.json", "exit": "exit.json", "fmc": "fmc.json"}
# Figures of the wall clock differ between any two runs; everything else must match exactly.
CLOCK = {"seconds", "date", "timings_s", "latency_ms", "latency_ms_mean", "throughput", "throughput_by_codec", "machine", "run",
         # Predictive Exit's wall-clock figures: measured latency compared at equal accuracy, the engine's own time
         "latency_reduction", "latency_reduction_vs_classic", "classic_latency_ms", "engine_overhead_us_per_input",
         "engine_us_per_decision"}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipes")
    for name, obj in (("chain", CHAIN), ("exit", EXIT), ("fmc", FMC)):
        (d / f"{name}.yaml").write_text(yaml.safe_dump(obj))
    return {name: str(d / f"{name}.yaml") for name in ("chain", "exit", "fmc")}


def argv(command, recipes, out):
    return {"run": ["run", recipes["chain"], "--out", out],
            "order": ["order", recipes["chain"], "--out", out, "--workers", "0"],
            "search": ["search", recipes["chain"], "--out", out, "--trials", "3", "--workers", "0"],
            "exit": ["exit", recipes["exit"], "--out", out],
            "fmc": ["fmc", recipes["fmc"], "--out", out],
            "bench": ["bench", out, "--no-peers", "--runs", "1", "--warmup", "0", "--batch", "1"],
            "export": ["export", out]}[command]


def cli(*args, kill=None):
    env = {**os.environ, "CHAINCOMP_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CHAINCOMP_KILL_AT", None)
    if kill:
        env["CHAINCOMP_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "chaincomp", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- one writer per folder ----

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits):
    """A finished `chaincomp run` folder (baseline only): what bench and export read and write into."""
    from chaincomp.chain import run_chain
    from chaincomp.recipe import parse_recipe

    obj = tiny_recipe([])
    out = tmp_path_factory.mktemp("finished") / "run"
    run_chain(parse_recipe(obj), out, data=digits, write_report=False, recipe_text=yaml.safe_dump(obj))
    return out


LOCKED = ["run", "order", "search", "exit", "fmc", "bench", "export"]   # export: into the run folder (default)


@pytest.mark.parametrize("command", LOCKED)
def test_second_writer_is_refused_and_changes_nothing(command, recipes, finished_run, tmp_path):
    out = tmp_path / "out"
    if command in ("bench", "export"):
        shutil.copytree(finished_run, out)
    else:
        out.mkdir()
    for name in ("keep.txt", "results.json", *RESULT.values()):     # what a command might replace or drop
        (out / name).write_text(f"{name} of the first run\n")
    with RunLock(out):
        before = snapshot(out)                          # the lock file too, holding this test's pid
        p = cli(*argv(command, recipes, out))
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert lines[0].startswith("chaincomp: error:") and "another chaincomp command" in lines[0]
    assert str(out) in lines[0] and str(out / ".lock") in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert snapshot(out) == before


# ---- kill -9 anywhere, --resume, same result ----

def result(command, out):
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in CLOCK}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.loads((out / RESULT[command]).read_text()))


_references: dict[str, dict] = {}


def reference(command, recipes, tmp_path_factory):
    if command not in _references:
        out = tmp_path_factory.mktemp(f"ref-{command}") / "out"
        p = cli(*argv(command, recipes, out))
        assert p.returncode == 0, p.stderr[-2000:]
        _references[command] = result(command, out)
    return _references[command]


# (command, kill point, a file the resumed run must reuse as it is, not write again)
KILLS = [
    ("order", "train_step:3", None),                         # training the shared baseline
    ("order", "between_weights_and_json:2", "baseline.safetensors"),   # chain PQ: prune's weights in place, JSON not
    ("order", "chain_done:1", "runs/PQ-s0/results.json"),    # between two chains
    ("search", "param_drawn:5", "trials/0000.json"),         # trial 1 half-way through drawing its parameters
    ("search", "between_weights_and_json:5", "trials/0000.json"),      # inside trial 1's chain
    ("search", "trial_recorded:2", "trials/0001.json"),      # trial 1 on disk, not yet told to the study
    ("exit", "train_step:2", None),                          # training the backbone
    ("exit", "weights_written:1", None),                     # trained network in a temp file, not renamed
    ("exit", "file_written:4", "exit_model.safetensors"),    # exit.json in a temp file, report written
    ("fmc", "train_step:2", None),                           # training task 0
    ("fmc", "fmc_task_saved:1", "tasks/00.json"),            # task 0 saved, task 1 not begun
    ("fmc", "train_step:6", "tasks/00.json"),                # training task 1
]


@pytest.mark.parametrize("command,kill,kept", KILLS, ids=[f"{c}-{k}" for c, k, _ in KILLS])
def test_killed_and_resumed_ends_with_the_uninterrupted_result(command, kill, kept, recipes, tmp_path,
                                                               tmp_path_factory):
    expected = reference(command, recipes, tmp_path_factory)
    out = tmp_path / "out"
    p = cli(*argv(command, recipes, out), kill=kill)
    assert p.returncode == -9, f"not killed at {kill}: {p.returncode} {p.stderr[-1000:]}"
    assert not (out / RESULT[command]).exists()          # no result until every file of the run is complete
    inode = (out / kept).stat().st_ino if kept else None
    p = cli(*argv(command, recipes, out), "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert result(command, out) == expected
    if kept:
        assert (out / kept).stat().st_ino == inode, f"{kept} was written again instead of reused"
