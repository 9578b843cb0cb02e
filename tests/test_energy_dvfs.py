"""Hand-computed DVFS choices. Profile P (measured power, so energy per cycle is exact):
A 100 MHz 1 W -> 10 nJ/cycle; B 200 MHz 1.6 W -> 8 nJ/cycle; C 400 MHz 4 W -> 10 nJ/cycle.
"""
import pytest
from hypothesis import given, settings, strategies as st

from chaincomp.energy.dvfs import choose_point, energy_of, simulate_inference
from chaincomp.energy.profiles import load_profile, profile_from_dict
from chaincomp.errors import UserError

P = profile_from_dict({"name": "p", "idle_power_w": 0.5, "operating_points": [
    {"freq_mhz": 100, "voltage_v": 0.8, "power_w": 1.0},
    {"freq_mhz": 200, "voltage_v": 0.9, "power_w": 1.6},
    {"freq_mhz": 400, "voltage_v": 1.0, "power_w": 4.0}]})
A, B, C = P.points()
W = 2e8  # cycles: A 2 s / 2 J, B 1 s / 1.6 J, C 0.5 s / 2 J


def test_energy_of_includes_static_power_over_time():
    m = profile_from_dict({"name": "m", "activity": 0.5, "capacitance_f": 1e-9, "static_power": {"k_w_per_v": 0.2},
                           "operating_points": [{"freq_mhz": 200, "voltage_v": 0.9}]}).points()[0]
    # P = 0.5 * 1e-9 * 0.81 * 2e8 + 0.2 * 0.9 = 0.081 + 0.18 W, for 1 s
    assert energy_of(m, 2e8) == pytest.approx(0.261)
    assert energy_of(B, W) == pytest.approx(1.6)


def test_only_top_point_meets_tight_deadline():
    assert choose_point(P, W, 0.0, 0.6) == (C, True)


def test_loose_deadline_picks_least_energy_not_lowest_frequency():
    assert choose_point(P, W, 0.0, 10.0) == (B, True)


def test_impossible_deadline_gives_top_point_not_met():
    assert choose_point(P, W, 0.0, 0.4) == (C, False)
    assert choose_point(P, W, 5.0, 4.0) == (C, False)      # already late


def test_elapsed_time_counts_and_boundary_meets():
    assert choose_point(P, W, 0.5, 1.5) == (B, True)        # 0.5 + 1.0 == 1.5
    assert choose_point(P, W, 0.6, 1.5) == (C, True)


def test_energy_tie_goes_to_faster_point():
    q = profile_from_dict({"name": "q", "operating_points": [
        {"freq_mhz": 100, "voltage_v": 1, "power_w": 1.0}, {"freq_mhz": 200, "voltage_v": 1, "power_w": 2.0}]})
    assert choose_point(q, 1e8, 0, 10)[0].freq_mhz == 200


def test_tx2_gpu_loose_deadline_picks_its_most_efficient_point():
    prof = load_profile("jetson_tx2_gpu")
    best = min(prof.points(), key=lambda p: p.energy_per_cycle_j)
    assert best.freq_mhz == 522.75                          # as the YAML comment says
    assert choose_point(prof, 1e9, 0, 100)[0] == best
    assert choose_point(prof, 1e9, 0, 1e9 / 1300.5e6 * 1.01)[0].freq_mhz == 1300.5


SEG = [1e8] * 4   # 4 segments; exit after segment 1 -> 2e8 cycles run; D = 1.2 s; idle 0.5 W


def test_classic_runs_everything_at_top():
    r = simulate_inference(P, SEG, "classic", 1.2, exit_after=1)
    assert r.freqs_mhz == [400] * 4 and r.met_deadline and r.kind == "modelled"
    assert r.latency_s == pytest.approx(1.0)
    assert r.busy_energy_j == pytest.approx(4.0) and r.idle_energy_j == pytest.approx(0.1)
    assert r.energy_j == pytest.approx(4.1)


def test_early_exit_top_point_then_idle():
    r = simulate_inference(P, SEG, "early_exit", 1.2, exit_after=1)
    assert r.freqs_mhz == [400, 400] and r.latency_s == pytest.approx(0.5)
    assert r.energy_j == pytest.approx(2.0 + 0.5 * 0.7)


def test_predictive_with_oracle_prediction():
    r = simulate_inference(P, SEG, "predictive", 1.2, exit_after=1)
    # before seg 0: W=2e8, t=0 -> B (1 s, 1.6 J) ; before seg 1: W=1e8, t=0.5 -> A late (1.5 s), B
    assert r.freqs_mhz == [200, 200] and r.latency_s == pytest.approx(1.0) and r.met_deadline
    assert r.energy_j == pytest.approx(1.6 + 0.1)
    e = {s: simulate_inference(P, SEG, s, 1.2, exit_after=1).energy_j for s in ("classic", "early_exit")}
    assert r.energy_j < e["early_exit"] < e["classic"]


def test_predictive_rechooses_after_misprediction():
    # predicts the full network first (4e8 cycles: only C meets 1.2 s), then 1e8 at t = 0.25 -> B
    r = simulate_inference(P, SEG, "predictive", 1.2, exit_after=1, predicted_remaining=[4e8, 1e8])
    assert r.freqs_mhz == [400, 200] and r.latency_s == pytest.approx(0.75)
    assert r.busy_energy_j == pytest.approx(1.0 + 0.8)
    assert r.by_point[400] == pytest.approx({"cycles": 1e8, "seconds": 0.25, "energy_j": 1.0})
    assert r.by_point[200] == pytest.approx({"cycles": 1e8, "seconds": 0.5, "energy_j": 0.8})
    same = simulate_inference(P, SEG, "predictive", 1.2, exit_after=1, predicted_remaining=[None, 1e8])
    assert same.freqs_mhz == [400, 200]                     # top point until the first prediction
    sw = simulate_inference(P, SEG, "predictive", 1.2, exit_after=1, predicted_remaining=[4e8, 1e8],
                            switch_latency_s=0.01)
    assert sw.latency_s == pytest.approx(0.76)


def test_reserved_time_counts_as_spent_when_choosing():
    # before seg 0: 2e8 cycles with 0.5 s held back -> only C fits in 0.7 s; before seg 1 nothing
    # is reserved: 1e8 cycles at t = 0.25 -> B (A would end at 1.25 s)
    r = simulate_inference(P, SEG, "predictive", 1.2, exit_after=1, reserve_s=[0.5, 0.0])
    assert r.freqs_mhz == [400, 200] and r.latency_s == pytest.approx(0.75) and r.met_deadline
    assert simulate_inference(P, SEG, "predictive", 1.2, exit_after=1, reserve_s=[0.0, 0.0]).freqs_mhz == [200, 200]


def test_predictive_impossible_deadline_runs_top_and_reports_miss():
    r = simulate_inference(P, SEG, "predictive", 0.1, exit_after=1)
    assert r.freqs_mhz == [400, 400] and not r.met_deadline and r.idle_energy_j == 0


def test_bad_arguments():
    with pytest.raises(UserError, match="schedule"):
        simulate_inference(P, SEG, "turbo", 1.0)
    with pytest.raises(ValueError):
        simulate_inference(P, SEG, "early_exit", 1.0, exit_after=7)
    with pytest.raises(ValueError):
        simulate_inference(P, SEG, "predictive", 1.0, exit_after=1, predicted_remaining=[1e8])


@settings(max_examples=200, deadline=None)
@given(w=st.floats(0, 1e10), t=st.floats(0, 10), d=st.floats(0.001, 20))
def test_choice_is_optimal_among_feasible(w, t, d):
    p, met = choose_point(P, w, t, d)
    feasible = [q for q in P.points() if t + w / q.freq_hz <= d * (1 + 1e-9)]
    assert met == bool(feasible)
    if feasible:
        assert p in feasible
        assert energy_of(p, w) <= min(energy_of(q, w) for q in feasible) + 1e-15
    else:
        assert p == C
