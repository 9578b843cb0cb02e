"""The prediction engine and thresholds on hand-made logits with hand-computed answers."""
import pytest
import torch

from chaincomp.exits import predictive as pe


def rule(T=(1, 1, 1, 1, 1), beta=2.0, rounds=8, start=0, give_up="jump", points=(0, 1, 2, 3, 4)):
    return pe.PredictiveRule(tuple(points), tuple(float(t) for t in T), beta, rounds, start, give_up)


def test_smooth3_is_kernel_111_with_zero_padding():
    assert pe.smooth3([1.0, 2.0, 3.0]) == [3.0, 6.0, 5.0]
    assert pe.smooth3([4.0]) == [4.0]
    torch_conv = torch.nn.functional.conv1d(torch.tensor([[[1.0, -2.0, 5.0, 0.5]]]), torch.ones(1, 1, 3), padding=1)
    assert pe.smooth3([1.0, -2.0, 5.0, 0.5]) == pytest.approx(torch_conv.flatten().tolist())


def test_thresholds_are_mean_absolute_logit_over_inputs_and_classes():
    z0 = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    z1 = torch.tensor([[0.0, 0.0], [0.0, -8.0]])
    assert pe.exit_thresholds([z0, z1]) == [2.5, 2.0]


# z = [0.5, 0.2, 0.1] at exit 0, limits beta*T:
# round 1 [0.7, 0.8, 0.3] max 0.8; round 2 [1.5, 1.8, 1.1] max 1.8; round 3 [3.3, 4.4, 2.9] max 4.4;
# round 4 [7.7, 10.6, 7.3] max 10.6.
Z = [0.5, 0.2, 0.1]


def test_engine_predicts_first_round_above_next_threshold():
    r = rule()                                   # limits 2 everywhere: round 3 (4.4 > 2) -> exit 3
    assert r.predict(0, Z) == (3, False)
    assert not r.fires(0, Z)


def test_engine_uses_threshold_of_the_layer_it_predicts():
    r = rule(T=(1, 1, 1, 3, 1))                   # exit 3 needs 6 > 4.4; round 4: 10.6 > 2 -> exit 4
    assert r.predict(0, Z) == (4, False)
    r = rule(T=(1, 1, 1, 3, 6))                   # exit 4 needs 12 > 10.6: beyond the last exit
    assert r.predict(0, Z) == (5, True)


def test_engine_is_strict_and_exit_rule_is_not():
    r = rule(T=(1, 1, 1, 2.2, 1))                 # round 3 max 4.4, limit 4.4: not '>' -> round 4 -> exit 4
    assert r.predict(0, Z) == (4, False)
    assert rule(T=(0.25, 1, 1, 1, 1)).fires(0, Z)  # 0.5 >= 2 * 0.25


def test_give_up_after_R_rounds():
    assert rule(rounds=2).predict(0, Z) == (2, True)          # jump: next check at block 0 + 2
    assert rule(rounds=2, give_up="final").predict(0, Z) == (5, True)
    # from exit 3 only one round has an exit after it (exit 4): 0.8 < 2, give up past the end
    assert rule(rounds=2).predict(3, Z) == (5, True)


def test_engine_skips_rounds_that_land_on_no_exit():
    r = rule(T=(1, 1, 1), points=(0, 2, 3))       # round 1 lands on block 1 (no exit); round 2: 1.8 < 2
    assert r.predict(0, Z) == (2, False)          # round 3: block 3 = exit 2, 4.4 > 2


def test_beta_must_be_positive():
    with pytest.raises(ValueError):
        rule(beta=0)


def test_batched_engine_matches_scalar_engine():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(64, 10, generator=g) * (k + 1) for k in range(6)]
    r = pe.PredictiveRule((0, 1, 2, 3, 4, 5), tuple(pe.exit_thresholds(logits)), 1.7, 3, 0, "jump")
    nxt, gave = pe.next_exits(logits, r)
    for i in range(64):
        for k in range(6):
            assert r.predict(k, logits[k][i].double().tolist()) == (int(nxt[i, k]), bool(gave[i, k]))


def test_simulation_and_prediction_accuracy_by_hand():
    # 3 exits at blocks 0,1,2, limits 2 (beta 2, T 1), R = 1, start at block 0.
    # input 0: exit 0 fires (3 >= 2).
    # input 1: exit 0 [1, 0.5] -> round 1 [1.5, 1.5] < 2 -> give up, jump to block 1; exit 1 [2.5, 0] fires.
    # input 2: exit 0 [1.2, 1] -> round 1 [2.2, 2.2] > 2 -> predict exit 1; exit 1 [0, 0.1] does not fire,
    #          round 1 [0.1, 0.1] -> give up -> exit 2; exit 2 [0, 0] no -> final.
    e0 = torch.tensor([[3.0, 0.0], [1.0, 0.5], [1.2, 1.0]])
    e1 = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 0.1]])
    e2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    r = pe.PredictiveRule((0, 1, 2), (1.0, 1.0, 1.0), 2.0, 1, 0, "jump")
    p = pe.simulate_predictive([e0, e1, e2], r)
    assert p.exit.tolist() == [0, 1, 3]
    assert p.heads.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert p.predictions == [[], [(0, 1)], [(0, 1), (1, 2), (2, 3)]]   # (2, 3): last exit, not counted
    acc = pe.prediction_accuracy([e0, e1, e2], r, p)
    # input 1: gave up at 0 -> check 1, actual 1: right. input 2: predicted 1, actual final: wrong;
    # then gave up at 1 -> check 2, actual final (beyond): right.
    assert acc["prediction_accuracy"] == pytest.approx(50.0) and acc["n_first_predictions"] == 2
    assert acc["prediction_accuracy_all"] == pytest.approx(200 / 3) and acc["n_predictions"] == 3


def test_start_block_skips_early_exits_for_every_way():
    e = [torch.full((1, 2), 9.0)] * 3
    r = pe.PredictiveRule((0, 1, 2), (1.0, 1.0, 1.0), 2.0, 8, 1, "jump")
    assert pe.simulate_predictive(e, r).exit.tolist() == [1]
    f = pe.fires_rule(e, (0, 1, 2), "maxlogit", [2.0] * 3, start_block=1)
    ee = pe.simulate_early_exit(f, (0, 1, 2), 1)
    assert ee.exit.tolist() == [1] and ee.heads.tolist() == [[False, True, False]]


def test_separability_tells_a_blind_criterion_from_a_good_one():
    """Wrong answers here carry one large negative logit: max softmax ranks every right answer above every
    wrong one (AUROC 1), while max|logit| ranks them the other way round (AUROC 0)."""
    from chaincomp.exits.rules import separability

    right = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])        # confident, |z| at most 4
    wrong = torch.tensor([[0.2, 0.1, -9.0], [0.1, 0.3, -8.0]])       # unsure, but |z| up to 9
    z = torch.cat([right, wrong])
    y = torch.tensor([0, 1, 2, 2])                                   # the wrong ones answer 0 and 1
    sep = separability([z, z[:, [1, 0, 2]]], y)
    assert sep["confidence"][0] == 1.0 and sep["maxlogit"][0] == 0.0
    assert sep["entropy"][0] == 1.0
    assert sep["confidence"][1] is None        # the swapped exit gets no answer right: no ranking to judge


def test_softmax_engine_fires_and_predicts_on_max_softmax_of_smoothed_logits():
    import math
    r = pe.PredictiveRule((0, 1, 2, 3, 4), (1.0,) * 5, 0.6, 8, 0, "jump", "confidence")
    z = [2.0, 0.0, 0.0]                               # softmax max = e^2 / (e^2 + 2) = 0.787 >= 0.6: fires
    assert r.fires(0, z) and r.decide(0, torch.tensor(z)) == -1
    z = [1.0, 0.2, 0.0]      # 0.55 < 0.6; rounds: [1.2, 1.2, 0.2] 0.42, [2.4, 2.6, 1.4] 0.47, [5.0, 6.4, 4.0] 0.75
    v, hit = z, None
    for i in range(1, 5):                             # exits sit at blocks 1..4 after exit 0
        v = pe.smooth3(v)
        m = max(math.exp(a - max(v)) for a in v) / sum(math.exp(a - max(v)) for a in v)
        if m > 0.6 and hit is None:
            hit = i
    assert hit == 3
    expected = (3, False)
    assert r.predict(0, z) == expected and r.decide(0, torch.tensor(z)) == expected[0]


def test_decide_is_fires_then_predict():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(32, 10, generator=g) * (k + 1) for k in range(6)]
    for crit, beta in (("maxlogit", 1.3), ("confidence", 0.7)):
        r = pe.PredictiveRule((0, 1, 2, 4, 5, 7), tuple(pe.exit_thresholds(logits)), beta, 3, 0, "jump", crit)
        fires = pe.fires_of(logits, r)
        nxt, _ = pe.next_exits(logits, r)
        for i in range(32):
            for k in range(6):
                want = -1 if fires[i, k] else int(nxt[i, k])
                assert r.decide(k, logits[k][i]) == want
