"""Crash safety, one writer, divergence, untrusted files: each promise shown by a test."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from chaincomp.cli import main
from chaincomp.errors import DivergenceError, UserError
from chaincomp.io import RunLock, load_weights, safe_output_path
from conftest import tiny_recipe

KILL_POINTS = [
    "train_step:3",                  # in the middle of training the baseline
    "weights_written:1",             # baseline weights written to a temp file, not yet renamed
    "between_weights_and_json:2",    # a stage's weights in place, its JSON commit marker not yet
    "file_written:5",                # a stage's JSON written to a temp file, not yet renamed
    "train_step:14",                 # in the middle of a later stage's fine-tuning
]


def _recipe_file(tmp_path):
    r = tiny_recipe(threads=1)
    r["data"]["limit_train"] = 200
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _run(recipe, out, *extra, kill=None, nan=None):
    env = {**os.environ, "CHAINCOMP_QUIET": "1"}
    env.pop("CHAINCOMP_KILL_AT", None)
    env.pop("CHAINCOMP_NAN_AT", None)
    if kill:
        env["CHAINCOMP_KILL_AT"] = kill
    if nan:
        env["CHAINCOMP_NAN_AT"] = nan
    return subprocess.run([sys.executable, "-m", "chaincomp", "run", str(recipe), "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def _ledger(out):
    res = json.loads((out / "results.json").read_text())
    return res["baseline"], [{k: v for k, v in s.items() if k != "seconds"} for s in res["stages"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    recipe = _recipe_file(tmp)
    p = _run(recipe, tmp / "out")
    assert p.returncode == 0, p.stderr
    return recipe, _ledger(tmp / "out")


@pytest.mark.parametrize("kill", KILL_POINTS)
def test_killed_and_resumed_run_ends_with_same_ledger(kill, tmp_path, reference):
    recipe, ledger = reference
    out = tmp_path / "out"
    p = _run(recipe, out, kill=kill)
    assert p.returncode == -9, f"not killed at {kill}: {p.returncode} {p.stderr[-500:]}"
    assert not (out / "results.json").exists()
    p = _run(recipe, out, "--resume")
    assert p.returncode == 0, p.stderr
    assert _ledger(out) == ledger


def test_divergence_through_the_command_line(tmp_path, reference):
    """A NaN loss in a later stage: exit 1 with one line naming the stage and step, the finished
    stages kept, nothing of the diverged stage written; a resumed run ends with the normal ledger."""
    recipe, ledger = reference
    out = tmp_path / "out"
    p = _run(recipe, out, nan="loss:14")  # the baseline takes 8 steps, so this is in a later stage
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0] and "step" in err[0], err
    names = [s["name"] for s in ledger[1]]
    stage = next(n for n in names if f"stage '{n}'" in err[0])
    ckpts = sorted(f.name for f in (out / "checkpoints").iterdir())
    assert "00-baseline.json" in ckpts and names.index(stage) > 0  # a later stage, earlier ones kept
    assert f"{names.index(stage):02d}-{names[names.index(stage) - 1]}.json" in ckpts
    assert not any(stage in f for f in ckpts) and not (out / "results.json").exists()
    p = _run(recipe, out, "--resume")
    assert p.returncode == 0, p.stderr
    assert _ledger(out) == ledger


def test_second_writer_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("first run's file")
    with RunLock(out):
        assert main(["run", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another chaincomp command" in err[0] and str(out) in err[0]
    assert (out / "keep.txt").read_text() == "first run's file"


def test_existing_run_needs_resume(tmp_path, capsys, digits):
    from chaincomp.chain import run_chain
    from chaincomp.recipe import parse_recipe
    r = parse_recipe(tiny_recipe([]))
    run_chain(r, tmp_path / "out", data=digits, write_report=False)
    before = (tmp_path / "out" / "results.json").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        run_chain(r, tmp_path / "out", data=digits)
    other = parse_recipe(tiny_recipe([], seed=1))
    with pytest.raises(UserError, match="another recipe"):
        run_chain(other, tmp_path / "out", data=digits, resume=True)
    assert (tmp_path / "out" / "results.json").read_bytes() == before


def test_resume_with_later_stages_edited_keeps_the_earlier_ones(tmp_path, digits):
    """Editing a later stage and resuming reuses the baseline and every unchanged stage before the edit,
    reruns the rest, and ends with the ledger of a fresh run of the edited recipe."""
    from chaincomp.chain import load_run, run_chain
    from chaincomp.recipe import parse_recipe
    prune = {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64}
    quant = {"technique": "quantize", "weight_bits": 4, "act_bits": 4, "epochs": 1, "batch_size": 64}
    first = run_chain(parse_recipe(tiny_recipe([prune, quant])), tmp_path / "out", data=digits, write_report=False)
    ckpts = tmp_path / "out" / "checkpoints"
    kept = {f: (ckpts / f).read_bytes() for f in ("00-baseline.json", "01-prune.json", "01-prune.safetensors")}
    edited = parse_recipe(tiny_recipe([prune, {**quant, "weight_bits": 8, "act_bits": 8}]))
    again = run_chain(edited, tmp_path / "out", data=digits, resume=True, write_report=False)
    assert {f: (ckpts / f).read_bytes() for f in kept} == kept             # not retrained, not rewritten
    assert again["stages"][0] == first["stages"][0]
    assert again["stages"][1]["bitops"] != first["stages"][1]["bitops"]      # W8A8 now
    fresh = run_chain(edited, tmp_path / "fresh", data=digits, write_report=False)
    drop = lambda st: [{k: v for k, v in s.items() if k != "seconds"} for s in st]
    assert drop(again["stages"]) == drop(fresh["stages"]) and again["final"] == fresh["final"]
    assert load_run(tmp_path / "out", data=digits).entry["bitops"] == fresh["final"]["bitops"]


def test_checkpoints_from_before_stage_digests_resume_and_are_restamped(tmp_path, digits):
    """A run folder written when checkpoints carried the whole-recipe digest still resumes with the same
    recipe, without retraining, and its checkpoints then carry stage digests."""
    from chaincomp.chain import run_chain
    from chaincomp.recipe import parse_recipe
    r = parse_recipe(tiny_recipe([{"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64}]))
    first = run_chain(r, tmp_path / "out", data=digits, write_report=False)
    jsons = sorted((tmp_path / "out" / "checkpoints").glob("*.json"))
    for j in jsons:                                   # as an older chaincomp wrote them
        meta = json.loads(j.read_text())
        j.write_text(json.dumps({**meta, "recipe_digest": r.digest()}))
    again = run_chain(r, tmp_path / "out", data=digits, resume=True, write_report=False)
    assert again["stages"] == first["stages"]         # same seconds: restored, not retrained
    assert [json.loads(j.read_text())["recipe_digest"] for j in jsons] == [r.stage_digest(0), r.stage_digest(1)]


def test_divergence_restores_last_good_weights(digits):
    from chaincomp.models import build_model
    from chaincomp.train import FitConfig, fit, multi_loss
    model = build_model("digits_cnn", in_channels=1, num_classes=10, width=0.5)
    fit(model, digits, FitConfig(1, 0.05, 64))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def loss_fn(outs, y, x):
        calls["n"] += 1
        loss = multi_loss(digits, outs, y)
        return loss * float("nan") if calls["n"] == 4 else loss

    with pytest.raises(DivergenceError) as e:
        fit(model, digits, FitConfig(2, 0.05, 64), loss_fn=loss_fn, stage="quantize")
    assert e.value.stage == "quantize" and e.value.step == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k
        assert torch.isfinite(v.float()).all()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil(str(target))}, evil)
    with pytest.raises(UserError, match="refused"):
        load_weights(evil)
    assert not target.exists()


def test_pickle_refused_through_the_cli(tmp_path, capsys):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "weights.pt"
    torch.save(_Evil(str(target)), evil)
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{name: digits_cnn, weights: {evil}}}\nchain: []\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert not target.exists()


def test_paths_cannot_escape_output(tmp_path):
    assert safe_output_path(tmp_path, "a/b.json") == (tmp_path / "a" / "b.json").resolve()
    with pytest.raises(UserError):
        safe_output_path(tmp_path, "../escape.json")
    with pytest.raises(UserError):
        safe_output_path(tmp_path, "/etc/passwd")
    from chaincomp.recipe import parse_recipe
    with pytest.raises(UserError, match="name"):
        parse_recipe({"name": "../../etc"})
