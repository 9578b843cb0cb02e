"""Learned step size quantization (`scales: lsq`): the step sizes get LSQ's scaled gradients, train in
the optimizer without weight decay, survive pruning, checkpoints and resume, and are what the ledger
and the exported ONNX use."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from chaincomp.chain import load_run, run_chain
from chaincomp.data.base import Split
from chaincomp.data.digits import load_digits_data
from chaincomp.deploy.export import export_run
from chaincomp.errors import UserError
from chaincomp.ledger import measure
from chaincomp.pruning import make_pruner, prune_step
from chaincomp.qmodules import QUANT_TYPES, QuantPlan, apply_quant, calibrate, step_sizes, weight_scale
from chaincomp.recipe import parse_recipe
from chaincomp.train import FitConfig, fit


def lsq_layer(bits: int) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3))
    apply_quant(m, QuantPlan(bits, 8, None, scales="lsq"))
    return m[0].eval()


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_weight_step_gradient_is_lsqs_scaled_by_one_over_sqrt_n_qp(bits):
    m = lsq_layer(bits)
    with torch.no_grad():
        m.weight_step.mul_(0.6)               # some weights beyond the clip level
    r = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    (m.quant_weight() * r).sum().backward()
    s, w = m.weight_step.detach(), m.weight.detach()
    qp = 1 if bits == 1 else 2 ** (bits - 1) - 1
    v = w / s
    if bits == 1:
        ds = torch.where(w >= 0, 1.0, -1.0)
    else:
        ds = torch.where(v <= -qp, -float(qp), torch.where(v >= qp, float(qp), torch.round(v) - v))
    want = (r * ds).sum(1, keepdim=True) / (6 * qp) ** 0.5
    assert torch.allclose(m.weight_step.grad, want, atol=1e-6)
    inside = torch.ones_like(w, dtype=torch.bool) if bits == 1 else (v > -qp) & (v < qp)
    assert torch.allclose(m.weight.grad, torch.where(inside, r, 0.0))    # straight through inside the range


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_the_codes_and_steps_export_reads_are_the_forward_pass(bits):
    m = lsq_layer(bits)
    with torch.no_grad():
        m.weight_step.mul_(0.7)
    q, s = m.integer_weight()
    assert torch.equal(s, m.weight_step.detach()) and torch.equal(q, q.round())
    assert torch.equal(q * s, m.quant_weight().detach())
    assert q.abs().max() <= (1 if bits == 1 else 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("signed", [True, False])
def test_act_step_gradient_is_scaled_by_features_per_sample(signed):
    m = lsq_layer(2)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2)) * 3
    x = x if signed else x.abs()
    with torch.no_grad():
        m.act_signed.fill_(signed)
        m.act_scale.fill_(0.01)                   # clips the largest inputs
    r = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    (m.quant_input(x) * r).sum().backward()
    lo, hi = (-128, 127) if signed else (0, 255)
    v = x / 0.01
    ds = torch.where(v <= lo, float(lo), torch.where(v >= hi, float(hi), torch.round(v) - v))
    want = (r * ds).sum() / (6 * hi) ** 0.5
    assert torch.allclose(m.act_scale.grad, want, rtol=1e-4)


def test_an_uncalibrated_layer_starts_from_its_first_batch_then_learns():
    m = lsq_layer(2).train()                      # e.g. a new exit head: never calibrated
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    m(x)
    assert m.act_scale.item() == pytest.approx(x.abs().max().item() / 127) and bool(m.calibrated)
    with torch.no_grad():
        m.act_scale.fill_(0.5)
    m(x * 10)                                     # no tracking after that: the step is the optimizer's
    assert m.act_scale.item() == 0.5


def toy_data():
    d = load_digits_data(seed=0)
    d.train = Split(d.train.x[:400], d.train.y[:400])
    return d


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def test_steps_train_in_their_own_group_without_weight_decay(monkeypatch):
    data = toy_data()
    model = toy_model()
    apply_quant(model, QuantPlan(2, 8, None, scales="lsq"))
    calibrate(model, [data.train.x[:64]], "mse")
    before = [p.detach().clone() for p in step_sizes(model)]
    groups = []

    class Spy(torch.optim.SGD):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            groups.extend(self.param_groups)
    monkeypatch.setattr(torch.optim, "SGD", Spy)
    fit(model, data, FitConfig(1, lr=0.01, batch_size=64, weight_decay=5e-4))
    ids = lambda ps: {id(p) for p in ps}
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert ids(groups[1]["params"]) == ids(step_sizes(model)) and len(step_sizes(model)) == 2 * 3
    assert all(not torch.equal(b, p) for b, p in zip(before, step_sizes(model)))   # every step size learned


def test_fixed_scales_are_untouched():
    model = toy_model()
    apply_quant(model, QuantPlan(2, 8, None))
    assert not step_sizes(model) and all("act_scale" in m._buffers for m in model.modules()
                                         if isinstance(m, QUANT_TYPES))
    assert "scales" not in QuantPlan(2, 8).to_dict()   # architecture records as before


def test_pruning_keeps_each_channels_own_step():
    model = toy_model()
    apply_quant(model, QuantPlan(2, 8, None, scales="lsq"))
    x = torch.randn(4, 1, 8, 8)
    calibrate(model, [x], "minmax")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QUANT_TYPES):   # distinct steps, to tell channels apart
                m.weight_step.copy_(torch.arange(1, m.weight_step.numel() + 1).reshape(m.weight_step.shape) * 0.01)
    old = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}
    prune_step(make_pruner(model, x, ratio=0.5, global_pruning=False), model)
    conv = model[0]
    assert conv.weight.shape[0] == 4 and conv.weight_step.shape[0] == 4
    for c in range(4):   # the kept channel's step is the one it had
        src = next(i for i in range(8) if torch.equal(old["0"][i], conv.weight[c].detach()))
        assert conv.weight_step[c].item() == pytest.approx((src + 1) * 0.01)
    model(x)


def test_recipe_refuses_lsq_without_qat_and_unknown_values(tiny):
    with pytest.raises(UserError, match=r"chain\.0.*scales: lsq.*mode: qat") as e:
        parse_recipe(tiny([{"technique": "quantize", "scales": "lsq", "mode": "ptq"}]))
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(UserError, match=r"chain\.0\.scales"):
        parse_recipe(tiny([{"technique": "quantize", "scales": "learned"}]))
    plain = parse_recipe(tiny([{"technique": "quantize"}]))
    assert plain.digest() == parse_recipe(tiny([{"technique": "quantize", "scales": "fixed"}])).digest()
    assert "scales" not in plain.identity()["chain"][0]      # recipes written before LSQ keep their digest


W2A8 = {"technique": "quantize", "weight_bits": 2, "act_bits": 8, "scales": "lsq", "epochs": 2, "lr": 0.01,
        "batch_size": 64, "calibration_batches": 2}
PRUNE = {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64}


def recipe(chain) -> dict:
    return {"name": "lsq", "seed": 0, "data": {"name": "digits", "limit_train": 400},
            "model": {"name": "digits_cnn", "width": 0.5}, "baseline": {"epochs": 3, "lr": 0.05, "batch_size": 32},
            "chain": chain}


@pytest.fixture(scope="module")
def lsq_run(tmp_path_factory):
    """A quantize(lsq) run, then resumed with a prune stage after it (the quantize stage is restored)."""
    data = load_digits_data(seed=0)
    data.train = Split(data.train.x[:400], data.train.y[:400])
    out = tmp_path_factory.mktemp("lsq") / "run"
    first = run_chain(parse_recipe(recipe([W2A8])), out, data=data, write_report=False,
                      recipe_text=yaml.safe_dump(recipe([W2A8])))
    second = run_chain(parse_recipe(recipe([W2A8, PRUNE])), out, resume=True, data=data, write_report=False,
                       recipe_text=yaml.safe_dump(recipe([W2A8, PRUNE])))
    return data, out, first, second


def test_checkpoint_and_resume_restore_the_learned_steps(lsq_run):
    data, out, first, second = lsq_run
    keys = ("metric", "bitops", "macs", "params", "size_bytes")
    assert {k: second["stages"][0][k] for k in keys} == {k: first["stages"][0][k] for k in keys}
    q = load_run(out, stage=second["stages"][0]["name"], data=data).model
    layers = [m for m in q.modules() if isinstance(m, QUANT_TYPES)]
    assert layers and all(m.scales == "lsq" for m in layers)
    # the saved steps, not ones computed again from the weight
    assert any(not torch.allclose(m.weight_step, weight_scale(m.weight, m.weight_bits, True, "mse")) for m in layers)
    again = measure(q, data)
    assert {k: again[k] for k in keys} == {k: first["stages"][0][k] for k in keys}
    pruned = load_run(out, data=data).model        # the resumed prune stage pruned the steps with the channels
    assert all(m.weight_step.shape[0] == m.weight.shape[0] for m in pruned.modules() if isinstance(m, QUANT_TYPES))
    assert {k: measure(pruned, data)[k] for k in keys} == {k: second["stages"][1][k] for k in keys}


def test_export_of_an_lsq_model_agrees_with_pytorch(lsq_run, tmp_path):
    data, out, _, second = lsq_run
    m = export_run(out, tmp_path / "m.onnx", data=data, echo=lambda _: None)
    c = m["check"]
    assert c["passed"] and abs(c["onnx_metric"] - c["torch_metric"]) <= 0.5, c
    assert c["prediction_agreement"] >= 99.0, c


def test_a_step_pushed_through_zero_stays_positive():
    """An update that would take a learned step size below zero (flipping or zeroing the layer's codes) is
    clamped to a tiny positive step after the optimizer's update."""
    from chaincomp.data.digits import load_digits_data
    from chaincomp.models import build_model
    from chaincomp.qmodules import QuantPlan, apply_quant, calibrate, step_sizes
    from chaincomp.train import FitConfig, fit

    torch.manual_seed(0)
    data = load_digits_data(seed=0)
    model = build_model("digits_cnn", width=0.25, num_classes=10, in_channels=1)
    apply_quant(model, QuantPlan(weight_bits=2, act_bits=8, scales="lsq"))
    calibrate(model, [data.train.x[:64]])
    for p in step_sizes(model):   # a huge lr on the steps' gradient: without the clamp some go negative
        p.register_hook(lambda g: g * 1e6)
    fit(model, data, FitConfig(epochs=1, lr=0.05, batch_size=64))
    assert all(bool((p > 0).all()) for p in step_sizes(model))
