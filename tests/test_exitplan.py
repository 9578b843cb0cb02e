"""Exits where they pay (deploy/exitplan.py): the plan is a pure function of a cost table and of which exit
fires for which row, so these tests inject both; no wall time is asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chaincomp.chain import load_run
from chaincomp.cli import main
from chaincomp.deploy.exitplan import expected_ms, plan
from chaincomp.deploy.export import export_run, manifest_path
from test_export import make_run, tiny_digits

FIRES = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], bool)   # rows x exits: where the rule fires


def test_plan_drops_the_exit_that_costs_more_than_it_saves():
    costs = {"blocks": [1, 1, 10], "heads": [0.5, 6, 1], "call": 0.1}
    p = plan(FIRES, costs)
    assert p["kept"] == [0]
    e0, e1 = p["exits"]
    # exit 0: half the rows leave and skip call + 11 ms of blocks + final head = 12.1 -> 6.05 saved per row,
    # for its head and one call (0.6) paid by every row
    assert e0["kept"] and e0["saving_ms"] == pytest.approx(6.05) and e0["cost_ms"] == pytest.approx(0.6)
    # exit 1: a quarter of the rows would skip 11.1 ms (2.775), but half the rows pay 6.1 (3.05): dropped
    assert not e1["kept"] and e1["saving_ms"] == pytest.approx(2.775) and e1["cost_ms"] == pytest.approx(3.05)
    assert e1["reason"].startswith("dropped: saving 2.775 ms/row < cost 3.05 ms/row")
    assert p["expected_ms"] == pytest.approx(7.65) and p["expected_ms_all_exits"] == pytest.approx(7.925)
    assert p["expected_ms"] == min(expected_ms(FIRES, s, costs) for s in [(), (0,), (1,), (0, 1)])


def test_plan_keeps_every_exit_when_calls_are_cheap_and_drops_all_when_nothing_exits():
    cheap = {"blocks": [1, 1, 10], "heads": [0.1, 0.1, 1], "call": 0.01}
    assert plan(FIRES, cheap)["kept"] == [0, 1]
    assert plan(np.zeros((4, 2), bool), cheap)["kept"] == []   # no row leaves: every exit is pure cost


def test_export_drops_exits_by_an_injected_cost_table(tmp_path):
    data = tiny_digits()
    run_dir = make_run(tmp_path, "exits", data)
    points = load_run(run_dir, data=data).model.exit_points
    n = len(points)
    costs = {"blocks": [1.0] * n + [50.0], "heads": [1000.0] + [0.01] * (n - 1) + [0.1], "call": 0.01}
    m = export_run(run_dir, tmp_path / "e.onnx", data=data, exits="measured", exit_costs=costs, echo=lambda s: None)
    p = m["exit_plan"]
    assert p["mode"] == "measured" and not p["costs_measured"] and p["exit_points"] == points
    assert 0 not in p["kept"] and p["exits"][0]["reason"].startswith("dropped: saving")
    assert len(m["files"]) == len(p["kept"]) + 1 and m["check"]["passed"], m["check"]
    assert [s["blocks"][1] for s in m["segments"][:-1]] == p["kept_points"]
    saved = json.loads(manifest_path(tmp_path / "e.onnx").read_text())["exit_plan"]
    assert saved["exits"][0]["reason"] == p["exits"][0]["reason"]
    # default: every exit kept, no plan
    assert export_run(run_dir, tmp_path / "a.onnx", data=data, echo=lambda s: None)["exit_plan"] is None
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--exits", "some"])


def test_the_driver_step_is_a_cost_of_every_exit_but_the_last():
    """The driver's own work after an exit (ExitRunner.step: the rule, the pending rows' features) is paid by
    every row reaching a kept exit; none after the final head."""
    base = {"blocks": [1, 1, 10], "heads": [0.5, 6, 1], "call": 0.1}
    with_driver = base | {"driver": 0.4}
    assert expected_ms(FIRES, (), with_driver) == pytest.approx(expected_ms(FIRES, (), base))
    # kept exit 0: every row pays the driver once (0.4), half of them go on
    assert expected_ms(FIRES, (0,), with_driver) == pytest.approx(expected_ms(FIRES, (0,), base) + 0.4)
    e0 = plan(FIRES, with_driver)["exits"][0]
    assert e0["cost_ms"] == pytest.approx(1.0) and "driver 0.4 ms" in e0["reason"] or e0["kept"]


def test_measured_costs_include_the_driver(tmp_path):
    """The measured table has a driver entry timed on runtime.ExitRunner.step itself (a value, not asserted
    against wall time beyond being a time)."""
    from chaincomp.deploy.exitplan import measure_costs
    from chaincomp.deploy.export import Segment, calibration_input, write_onnx

    data = tiny_digits()
    model = load_run(make_run(tmp_path, "exits", data), data=data).model
    costs = measure_costs(model, calibration_input(data), write_onnx, Segment, runs=5)
    assert costs["driver"] > 0 and len(costs["heads"]) == len(model.exit_points) + 1
    assert "ExitRunner.step" in costs["how"]
