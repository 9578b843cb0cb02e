"""Reading the ways at equal accuracy on their sweep curves, by hand."""
import pytest

from chaincomp.studies.predictive_exit.compare import at_accuracy, best_vs_early_exit, frontier, readout


def rows(*pts):
    return [{"setting": i, "test_macs": m, "test_metric": a, "test_ops_j": m * 1e-6, "energy_j": m * 2e-6,
             "latency_ms": m / 100, "deadline_met_pct": 100.0} for i, (m, a) in enumerate(pts)]


def test_frontier_drops_dominated_settings():
    f = frontier(rows((10, 90), (12, 89), (15, 95), (20, 95), (30, 97)))
    assert [r["test_macs"] for r in f] == [10, 15, 30]


def test_interpolates_between_the_two_settings_that_bracket_the_target():
    lo, hi, w = at_accuracy(rows((10, 90), (20, 96), (30, 98)), 97.0)
    assert (lo["test_macs"], hi["test_macs"], w) == (20, 30, pytest.approx(0.5))
    assert at_accuracy(rows((10, 90)), 91.0) is None                 # never reaches it
    lo, hi, w = at_accuracy(rows((10, 92), (20, 96)), 91.0)          # the cheapest already does
    assert lo is hi and w == 0.0


def test_readout_compares_every_way_at_the_same_accuracy():
    sweeps = {"predictive": rows((10, 90), (20, 96), (30, 98)), "predictive_softmax": rows((40, 97)),
              "confidence": rows((30, 96), (50, 98)), "entropy": rows((35, 97)), "maxlogit": rows((60, 95))}
    classic = {"macs_per_sample": 100.0, "energy_ops_j": 1e-4, "energy_j": 2e-4, "latency_ms_trimmed": 1.0}
    r = readout(sweeps, classic, 97.0)
    assert r["ways"]["predictive"]["macs"] == pytest.approx(25) and r["ways"]["confidence"]["macs"] == pytest.approx(40)
    assert r["ways"]["maxlogit"] is None and r["early_exit_reference"] == "entropy"       # 35 < 40 MACs
    assert r["predictive_vs_classic"]["computation_reduction"] == pytest.approx(75.0)
    assert r["predictive_vs_early_exit"]["computation_reduction"] == pytest.approx(100 * (1 - 25 / 35))
    assert r["predictive_vs_classic"]["latency_reduction"] == pytest.approx(75.0)
    assert r["predictive_softmax_vs_each_strategy"]["maxlogit"] is None


def test_up_to_against_early_exit_is_the_best_over_targets():
    curve = [{"target_top1": 98, "drop": 0, "macs": {"predictive": 50, "confidence": 40, "entropy": None, "maxlogit": None}},
             {"target_top1": 97, "drop": 1, "macs": {"predictive": 20, "confidence": 40, "entropy": 30, "maxlogit": None}}]
    b = best_vs_early_exit(curve)
    assert b["computation_reduction"] == pytest.approx(100 * (1 - 20 / 30)) and b["drop"] == 1
