"""Baseline training options for short schedules: label smoothing and progressive resizing (early epochs at
smaller inputs). Recipes without them keep their digest; with them the loop really changes what it trains on."""
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from chaincomp import baselines
from chaincomp.cli import main
from chaincomp.errors import UserError
from chaincomp.models import build_model
from chaincomp.recipe import parse_recipe
from chaincomp.train import FitConfig, fit, resized, task_loss
from conftest import tiny_recipe


def test_size_at_walks_the_phases_then_returns_to_the_data_size():
    cfg = FitConfig(6, resize=((2, 16), (1, 24)))
    assert [cfg.size_at(e) for e in range(6)] == [16, 16, 24, None, None, None]
    assert FitConfig(3).size_at(0) is None


def test_resized_keeps_the_picture_at_a_smaller_size():
    x = torch.linspace(0, 1, 32)[None, None, None, :].expand(2, 3, 32, 32).contiguous()   # a horizontal ramp
    y = resized(x, 16)
    assert y.shape == (2, 3, 16, 16)
    assert torch.allclose(y.mean(), x.mean(), atol=1e-3)            # same picture, fewer pixels
    assert bool((y[..., 1:] > y[..., :-1]).all())                  # the ramp still rises left to right
    assert resized(x, 32) is x and resized(x, None) is x
    assert resized(torch.zeros(1, 3, 32, 64), 16).shape == (1, 3, 16, 32)   # shorter side, aspect kept


def test_label_smoothing_is_the_smoothed_cross_entropy(digits):
    out, y = torch.randn(5, 10, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 9, 1, 2])
    want = 0.9 * F.cross_entropy(out, y) + 0.1 * (-F.log_softmax(out, -1).mean(-1)).mean()
    assert torch.allclose(task_loss(digits, out, y, 0.1), want, atol=1e-6)
    assert torch.allclose(task_loss(digits, out, y), F.cross_entropy(out, y))


def test_fit_trains_the_early_epochs_at_the_phase_sizes(digits):
    model = build_model("digits_cnn", in_channels=1, num_classes=10, width=0.25)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    hist = fit(model, digits, FitConfig(3, lr=0.05, batch_size=100, resize=((1, 4), (1, 6))))
    per_epoch = len(seen) // 3
    assert [seen[i * per_epoch] for i in range(3)] == [(4, 4), (6, 6), (8, 8)]
    assert len(hist["loss"]) == 3


def test_label_smoothing_changes_the_training(digits):
    def run(ls):
        torch.manual_seed(0)
        m = build_model("digits_cnn", in_channels=1, num_classes=10, width=0.25)
        return fit(m, digits, FitConfig(1, lr=0.05, batch_size=100, label_smoothing=ls))["loss"][0]
    assert run(0.0) == run(0.0)
    assert run(0.3) > run(0.0)      # smoothed targets can never be fitted to zero loss: a higher loss


def test_recipes_without_the_fields_keep_their_digest_and_with_them_change_it():
    plain = baselines.digest(baselines.of_recipe(parse_recipe(tiny_recipe([]))))
    explicit = tiny_recipe([])
    explicit["baseline"] = {**explicit["baseline"], "label_smoothing": 0.0, "resize": [], "ema": 0.0}
    assert baselines.digest(baselines.of_recipe(parse_recipe(explicit))) == plain
    for extra in ({"label_smoothing": 0.1}, {"resize": [{"epochs": 1, "size": 4}]}, {"ema": 0.99}):
        r = tiny_recipe([])
        r["baseline"] = {**r["baseline"], **extra}
        assert baselines.digest(baselines.of_recipe(parse_recipe(r))) != plain, extra


def test_ema_ends_on_the_moving_average_of_every_step(digits):
    """The fit ends on w_ema <- d * w_ema + (1 - d) * w after every optimizer step (BN statistics too; the
    average starts at the first step's weights), recomputed here from the weights each step left behind."""
    def model():
        torch.manual_seed(0)
        return build_model("digits_cnn", in_channels=1, num_classes=10, width=0.25)
    d = 0.9
    m = model()
    avg = {}

    def average(opt, args, kwargs):   # after every optimizer step of the plain run: follow its weights
        for key, v in m.state_dict().items():
            if v.is_floating_point():
                avg[key] = d * avg[key] + (1 - d) * v.detach().double() if key in avg else v.detach().double()
    hook = register_optimizer_step_post_hook(average)
    try:
        fit(m, digits, FitConfig(1, lr=0.05, batch_size=100))
    finally:
        hook.remove()
    plain = {k: v.clone() for k, v in m.state_dict().items()}
    m2 = model()
    fit(m2, digits, FitConfig(1, lr=0.05, batch_size=100, ema=d))
    for key, want in avg.items():   # BN statistics move in the forward pass after a step: checked by value
        assert torch.allclose(m2.state_dict()[key].double(), want, atol=1e-5), key
    assert any(not torch.equal(plain[k], m2.state_dict()[k]) for k in avg)   # and it is not the last step's weights
    counts = [k for k, v in plain.items() if not v.is_floating_point()]
    assert counts and all(torch.equal(plain[k], m2.state_dict()[k]) for k in counts)   # BN's batch counters: counts


@pytest.mark.parametrize("baseline, field", [
    ({"epochs": 1, "resize": [{"epochs": 2, "size": 4}]}, "baseline.resize"),
    ({"epochs": 2, "resize": [{"epochs": 1, "size": 1}]}, "baseline.resize"),
    ({"epochs": 1, "label_smoothing": 1.5}, "baseline.label_smoothing"),
    ({"epochs": 1, "ema": 1.0}, "baseline.ema"),
])
def test_bad_schedules_are_one_line_exit_2(tmp_path, capsys, baseline, field):
    r = tiny_recipe([])
    r["baseline"] = {**r["baseline"], **baseline}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert field in err and "\n" not in err


def test_check_refuses_the_options_on_a_dataset_that_is_not_classification(tmp_path, capsys):
    r = tiny_recipe([])
    r["data"] = {"name": "sr_sample", "scale": 2}
    r["baseline"] = {**r["baseline"], "resize": [{"epochs": 1, "size": 8}]}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "baseline.resize" in err and "classification only" in err and "\n" not in err


def test_the_options_refuse_a_task_that_is_not_classification():
    class Task:   # only what fit reads before it starts
        task = "super_resolution"
    with pytest.raises(UserError, match="classification only"):
        fit(torch.nn.Conv2d(1, 1, 1), Task(), FitConfig(1, label_smoothing=0.1))
