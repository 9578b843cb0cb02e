"""Ray is optional: without it the order study and the search run their chains in local worker
processes (or in-process with --workers 0) and give the same results; --address needs Ray."""
import json
import operator

import pytest

from chaincomp.cli import main
from chaincomp.errors import UserError
from chaincomp.studies import common
from conftest import tiny_study_recipe


@pytest.fixture
def no_ray(monkeypatch):
    def missing():
        raise ImportError("No module named 'ray'")
    monkeypatch.setattr(common, "_import_ray", missing)


def square(x):
    return x * x


def fails(x):
    raise ValueError(f"job {x} failed")


def refuses(x):
    raise UserError(f"job {x}: bad input")


def test_without_ray_jobs_run_in_local_processes(no_ray):
    with common.Executor(2) as ex:
        assert ex.ray is None and ex.pool is not None and ex.threads == 1
        for i in range(4):
            ex.submit(i, square, i)
        ex.submit("bad", fails, 7)
        got = {k: (r, e) for k, r, e in ex.drain()}
    assert {k: r for k, (r, _) in got.items() if k != "bad"} == {0: 0, 1: 1, 2: 4, 3: 9}
    assert got["bad"][0] is None and "job 7 failed" in str(got["bad"][1])    # reported per job, others kept


def test_a_user_error_in_a_worker_reaches_the_user(no_ray):
    with common.Executor(1) as ex, pytest.raises(UserError, match="job 3: bad input"):
        ex.submit(3, refuses, 3)
        ex.next_done()


def test_address_without_ray_is_one_line(no_ray, capsys, tmp_path):
    recipe = tiny_study_recipe(tmp_path / "r.yaml")
    assert main(["order", recipe, "--out", str(tmp_path / "o"), "--address", "10.0.0.1:6379"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chaincomp[ray]" in err
    assert not (tmp_path / "o" / "study.json").exists()


@pytest.mark.slow
def test_with_ray_importable_ray_runs_the_jobs():
    pytest.importorskip("ray")
    with common.Executor(1) as ex:
        assert ex.ray is not None and ex.pool is None
        ex.submit("a", operator.mul, 5, 5)      # a builtin: Ray workers do not see the tests folder
        assert list(ex.drain()) == [("a", 25, None)]


@pytest.mark.slow
def test_order_study_in_worker_processes_matches_in_process(no_ray, tmp_path):
    recipe = tiny_study_recipe(tmp_path / "r.yaml")
    for workers in ("0", "2"):
        assert main(["order", recipe, "--out", str(tmp_path / workers), "--workers", workers]) == 0
    a, b = (json.loads((tmp_path / w / "order.json").read_text()) for w in ("0", "2"))
    assert a["order"] == b["order"]
    for pa, pb in zip(a["pairs"], b["pairs"]):     # one torch thread in both modes: the same numbers
        assert [(o["metric"], o["bitops"]) for o in pa["orders"]] == [(o["metric"], o["bitops"]) for o in pb["orders"]]
