"""The search over order and degree: the space, the front, the files, resume after a crash."""
from __future__ import annotations

import json


from chaincomp.cli import main
from chaincomp.studies.common import stage_dicts
from chaincomp.recipe import load_recipe
from chaincomp.studies.search import _study, chain_from, pareto, space_for, suggest
from conftest import tiny_study_recipe as tiny_recipe


def test_space_and_chain_follow_the_recipe(tmp_path):
    recipe, _ = load_recipe(tiny_recipe(tmp_path / "r.yaml", ("distill", "quantize", "early_exit")))
    stages = stage_dicts(recipe)
    space = space_for(stages)
    assert set(space) == {"distill.student.width", "quantize.weight_bits", "quantize.act_bits", "early_exit.max_drop"}
    params = {"order": "EQD", "distill.student.width": 0.375, "quantize.weight_bits": 3, "quantize.act_bits": 6,
              "early_exit.max_drop": 0.75}
    chain = chain_from(params, stages)
    assert [s["technique"] for s in chain] == ["early_exit", "quantize", "distill"]
    assert chain[2]["student"]["width"] == 0.375 and chain[1]["weight_bits"] == 3 and chain[0]["max_drop"] == 0.75
    assert chain[1]["epochs"] == 1 and stages["quantize"]["weight_bits"] == 4      # recipe settings kept, not changed
    stages["early_exit"]["threshold"] = 0.9
    assert "early_exit.threshold" in space_for(stages)


def test_pareto_front():
    t = [{"state": "complete", "metric": m, "bitops": b, "number": i}
         for i, (m, b) in enumerate([(98, 100), (97, 10), (96, 50), (99, 1000), (99, 2000)])]
    t.append({"state": "fail", "number": 9})
    assert [x["number"] for x in pareto(t)] == [1, 0, 3]


def test_search_writes_trials_and_resumes_without_redoing(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", ("prune", "quantize"))
    out = tmp_path / "s"
    assert main(["search", recipe, "--out", str(out), "--trials", "2", "--workers", "0"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert len(res["trials"]) == 2 and res["pareto"]
    for t in res["pareto"]:
        assert {"chain", "metric", "bitops"} <= set(t) and len(t["chain"]) == 2
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000.json", "0001.json"]
    assert (out / "pareto.png").is_file() and (out / "optuna.journal").is_file()
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "trials").iterdir()}

    # A crash left trial 2 running: asked, parameters drawn, never told.
    r, _ = load_recipe(recipe)
    study = _study(out, r.seed, 4, "tpe")
    running = study.ask()
    suggest(running, r.techniques(), space_for(stage_dicts(r)))
    del study

    assert main(["search", recipe, "--out", str(out), "--trials", "4", "--workers", "0"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert [t["number"] for t in res["trials"]] == [0, 1, 2, 3]
    assert all(t["state"] == "complete" for t in res["trials"])
    assert res["trials"][2]["params"] == running.params                 # re-dispatched as asked
    assert {f.name: f.stat().st_mtime_ns for f in (out / "trials").iterdir() if f.name in stamps} == stamps
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["t0000", "t0001", "t0002", "t0003"]


def test_bad_budget_and_recipe(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", ("prune", "quantize"))
    assert main(["search", recipe, "--out", str(tmp_path / "s"), "--trials", "0"]) == 2
    assert "--trials" in capsys.readouterr().err
    one = tiny_recipe(tmp_path / "one.yaml", ("quantize",))
    assert main(["search", one, "--out", str(tmp_path / "s"), "--trials", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least two techniques" in err and len(err.splitlines()) == 1


def _asked(out, sampler: str, n: int, stop_after: int | None = None) -> list[dict]:
    """Ask/tell `n` trials with a made-up objective (no chains run); optionally reopen the study
    after `stop_after` trials, as a restarted search does."""
    techs = ["distill", "prune", "quantize"]
    space = {"distill.student.width": (0.25, 1.0, 0.125), "prune.ratio": (0.0, 0.8, 0.05),
             "quantize.weight_bits": (2, 8, 1)}
    out.mkdir()
    study, params = _study(out, 0, n, sampler), []
    for i in range(n):
        if stop_after is not None and i == stop_after:
            study = _study(out, 0, n, sampler)     # a fresh process: new sampler objects, same journal
        t = study.ask()
        p = suggest(t, techs, space)
        params.append(p)
        study.tell(t, [p["distill.student.width"] * 10 - p["prune.ratio"], p["quantize.weight_bits"] * 1e6])
    return params


def test_samplers_draw_the_same_trials_after_a_restart(tmp_path):
    """Both samplers, past their random start-up trials: the same seed gives the same trials, and a
    study reopened mid-way continues exactly as the uninterrupted one (the sampler is seeded per trial)."""
    for sampler in ("tpe", "nsga2"):
        whole = _asked(tmp_path / f"{sampler}-a", sampler, 14)
        assert _asked(tmp_path / f"{sampler}-b", sampler, 14, stop_after=7) == whole
        assert len({tuple(sorted(p.items())) for p in whole}) > 7      # not one point drawn again and again


def test_latency_objective(tmp_path, capsys):
    """--objective latency:ort:b1:t1: each trial's model is exported and timed; the front is by measured ms."""
    recipe = tiny_recipe(tmp_path / "r.yaml", ("prune", "quantize"))
    out = tmp_path / "s"
    assert main(["search", recipe, "--out", str(out), "--trials", "2", "--workers", "0",
                 "--objective", "latency:ort:b1:t1"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["objective"] == {"kind": "latency", "runtime": "ort", "batch": 1, "threads": 1}
    assert "measured latency" in res["objectives"][1]
    for t in res["trials"]:
        assert t["latency_ms"] > 0 and t["latency"]["batch"] == 1 and t["latency"]["threads"] == 1 and t["bitops"] > 0
        assert (out / "runs" / f"t{t['number']:04d}" / "latency" / "model.onnx").is_file()
    assert res["pareto"] and all("latency_ms" in t for t in res["pareto"])
    assert [t["number"] for t in res["pareto"]] == [t["number"] for t in pareto(res["trials"], "latency_ms")]
    assert main(["search", recipe, "--out", str(tmp_path / "x"), "--objective", "latency:tensorrt:b1:t1"]) == 2
    assert "--objective" in capsys.readouterr().err
