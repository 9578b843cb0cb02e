"""The order study: the pairwise rule, the precedence graph (ties, cycles), the files, bad input."""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chaincomp.cli import main
from chaincomp.studies.order import analyse, decide, find_cycles, respects, topo_order
from conftest import tiny_study_recipe as tiny_recipe

D, P, Q, E = "distill", "prune", "quantize", "early_exit"


def _o(metric, bitops, spread=0.0):
    return {"order": [], "metric": metric, "bitops": bitops, "spread": spread}


# ---- the rule ----

def test_equal_bitops_compares_metric_with_tolerance():
    assert decide(_o(98.0, 100), _o(97.0, 103))[0] == "a"
    assert decide(_o(97.0, 100), _o(98.0, 99))[0] == "b"
    assert decide(_o(98.0, 100), _o(97.8, 100))[0] == "tie"           # inside the 0.3 minimum
    assert decide(_o(98.0, 100, 1.5), _o(97.0, 100))[0] == "tie"      # inside the spread over seeds
    assert decide(_o(98.0, 100), _o(97.0, 100))[1].startswith("equal-bitops")


def test_dominance_and_tradeoff():
    w, rule = decide(_o(97.9, 50), _o(98.0, 100))          # cheaper, not worse beyond tol
    assert (w, rule.split(":")[0]) == ("a", "dominance")
    assert decide(_o(99.0, 1000), _o(98.9, 10))[0] == "b"
    # 10x cheaper (1 decade = 1 point) for 3 points: the dearer order wins
    assert decide(_o(95.0, 10), _o(98.0, 100)) == ("b", decide(_o(95.0, 10), _o(98.0, 100))[1])
    assert decide(_o(95.0, 10), _o(98.0, 100))[1].startswith("trade-off")
    # 1000x cheaper for 2 points: the cheaper order wins; 100x for 2 points is a tie
    assert decide(_o(96.0, 1), _o(98.0, 1000))[0] == "a"
    assert decide(_o(96.0, 1), _o(98.0, 100))[0] == "tie"
    assert decide(_o(96.0, 1), _o(98.0, 100), rate=2.0)[0] == "a"


# ---- the graph ----

def _pairs(table):
    """table: {(x, y): winner} -> pair records as analyse() would build them."""
    return [{"first": x, "second": y, "winner": w} for (x, y), w in table.items()]


def test_topological_order_with_ties_breaks_by_canonical_order():
    from chaincomp.studies.order import edges_of

    edges = edges_of(_pairs({(D, P): D, (D, Q): D, (D, E): D, (P, Q): "tie", (P, E): P, (Q, E): Q}))
    assert (P, Q) not in edges and (Q, P) not in edges
    order, notes = topo_order([D, P, Q, E], edges)
    assert order == [D, P, Q, E] and respects(order, edges)
    assert any("canonical" in n for n in notes)
    # The graph, not the canonical order, decides where it can: E before Q when measured so.
    order, _ = topo_order([D, P, Q, E], edges_of(_pairs({(Q, E): E, (P, Q): P})))
    assert order.index(E) < order.index(Q)


def test_cycle_is_reported_with_its_pairs_and_never_hidden():
    from chaincomp.studies.order import edges_of

    edges = edges_of(_pairs({(D, P): D, (P, Q): P, (D, Q): Q, (D, E): D, (P, E): P, (Q, E): Q}))
    cycles = find_cycles([D, P, Q, E], edges)
    assert len(cycles) == 1
    c = cycles[0]
    assert set(c["cycle"]) == {D, P, Q} and c["cycle"][0] == c["cycle"][-1]
    assert sorted(map(tuple, c["pairs"])) == sorted([(D, P), (P, Q), (Q, D)])
    order, notes = topo_order([D, P, Q, E], edges)
    assert order[-1] == E and set(order[:3]) == {D, P, Q}
    assert any("cycle" in n for n in notes)


def test_analyse_on_a_hand_made_table():
    def s(order, metric, bitops):
        return {"order": order, "metric": metric, "bitops": bitops, "spread": 0.0}

    summaries = {"QE": s([Q, E], 98.0, 10), "EQ": s([E, Q], 98.0, 10),            # tie
                 "PQ": s([P, Q], 98.0, 10), "QP": s([Q, P], 96.0, 10),            # P first
                 "PE": s([P, E], 97.0, 10), "EP": s([E, P], 97.0, 30)}            # P first (dominance)
    res = analyse([Q, E, P], summaries, 0.3, 1.0)
    assert res["order"] == [P, Q, E] and res["valid_topological_order"] and res["cycles"] == []
    assert [p["winner"] for p in res["pairs"]] == ["prune", "prune", "tie"]
    assert "ties" in res["notes"][0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["first", "second", "tie"]), min_size=6, max_size=6))
def test_any_pairwise_table_gives_an_order_that_is_valid_exactly_when_acyclic(choices):
    from itertools import combinations

    from chaincomp.studies.order import edges_of

    table = {(x, y): {"first": x, "second": y, "tie": "tie"}[c]
             for (x, y), c in zip(combinations([D, P, Q, E], 2), choices)}
    edges = edges_of(_pairs(table))
    order, _ = topo_order([D, P, Q, E], edges)
    assert sorted(order) == sorted([D, P, Q, E])
    assert respects(order, edges) == (not find_cycles([D, P, Q, E], edges))


# ---- the command ----

def test_order_writes_json_and_report_and_reuses_runs(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", ("prune", "quantize", "early_exit"))
    out = tmp_path / "o"
    assert main(["order", recipe, "--out", str(out), "--workers", "0", "--permutations", "--insertion"]) == 0
    res = json.loads((out / "order.json").read_text())
    assert set(res) >= {"pairs", "order", "cycles", "rule", "insertion", "permutations"}
    assert len(res["pairs"]) == 3 and sorted(res["order"]) == sorted([P, Q, E])
    for p in res["pairs"]:
        assert p["winner"] in (p["first"], p["second"], "tie") and p["rule"]
        assert [len(o["order"]) for o in p["orders"]] == [2, 2]
        assert all({"order", "metric", "spread", "bitops"} <= set(o) for o in p["orders"])
    assert res["valid_topological_order"] == (not res["cycles"])
    assert len(res["insertion"]) == 3 and len(res["permutations"]["orders"]) == 6
    for f in ("order.md", "precedence.png", "orders.png", "baseline.safetensors"):
        assert (out / f).is_file()
    assert (out / "runs" / "PQ-s0" / "results.json").is_file()
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("runs/*/results.json")}
    assert main(["order", recipe, "--out", str(out), "--workers", "0"]) == 0     # all reused
    assert {f: f.stat().st_mtime_ns for f in out.glob("runs/*/results.json")} == stamps
    assert json.loads((out / "order.json").read_text())["order"] == res["order"]


@pytest.mark.parametrize("techniques,args,needle", [
    (("prune",), [], "at least two techniques"),
    (("prune", "quantize", "prune"), [], "named twice"),
    (("prune", "quantize"), ["--seeds", "0"], "--seeds"),
    (("prune", "quantize"), ["--workers", "-1"], "--workers"),
    (("prune", "quantize"), ["--address", "127.0.0.1:1"], "--address"),   # unreachable, or Ray not installed
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, techniques, args, needle):
    recipe = tiny_recipe(tmp_path / "r.yaml", techniques)
    assert main(["order", recipe, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "study.json").exists()


def test_early_exit_without_classes_cannot_be_combined(tmp_path, capsys):
    obj = {"data": {"name": "sr_sample"}, "model": {"name": "digits_cnn"},
           "chain": [{"technique": "quantize"}, {"technique": "early_exit"}]}
    (tmp_path / "sr.yaml").write_text(yaml.safe_dump(obj))
    assert main(["order", str(tmp_path / "sr.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "early_exit needs a classification" in err and len(err.splitlines()) == 1


def test_order_with_two_ray_workers(tmp_path):
    pytest.importorskip("ray")     # an optional extra; tests/test_executor.py covers running without it
    recipe = tiny_recipe(tmp_path / "r.yaml", ("prune", "quantize"))
    out = tmp_path / "o"
    assert main(["order", recipe, "--out", str(out), "--workers", "2", "--seeds", "2"]) == 0
    res = json.loads((out / "order.json").read_text())
    assert res["seeds"] == [0, 1] and len(res["pairs"][0]["orders"][0]["seeds"]) == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["PQ-s0", "PQ-s1", "QP-s0", "QP-s1"]
