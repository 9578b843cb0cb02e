"""Each technique alone, on a tiny digits model, does what it says to the model itself."""
import pytest
import torch

from chaincomp.chain import run_chain
from chaincomp.errors import UserError
from chaincomp.exits.model import ExitNetwork
from chaincomp.qmodules import QUANT_TYPES
from chaincomp.recipe import parse_recipe


def run(tmp_path, tiny, digits, chain, name="r", **over):
    recipe = parse_recipe(tiny(chain, **over))
    return run_chain(recipe, tmp_path / name, data=digits, write_report=False)


def load(tmp_path, digits, name="r"):
    from chaincomp.chain import load_run
    return load_run(tmp_path / name, data=digits).model


def test_prune_really_removes_channels(tmp_path, tiny, digits):
    res = run(tmp_path, tiny, digits, [{"technique": "prune", "ratio": 0.5, "steps": 2, "epochs": 1}])
    base, after = res["baseline"], res["stages"][0]
    assert after["params"] < 0.5 * base["params"]
    assert after["macs"] < 0.5 * base["macs"]
    model = load(tmp_path, digits)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels < 16  # width 0.5 digits_cnn starts at 16 channels
    assert model.head[-1].out_features == 10  # the classifier is never pruned


def test_prune_round_to_keeps_channel_multiples(tmp_path, tiny, digits):
    counts = {}
    for name, round_to in (("free", None), ("r8", 8)):
        chain = [{"technique": "prune", "ratio": 0.4, "steps": 2, "epochs": 1, "round_to": round_to}]
        run(tmp_path, tiny, digits, chain, name=name, model={"name": "resnet20", "width": 0.5})
        model = load(tmp_path, digits, name)
        counts[name] = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    from chaincomp.chain import load_run

    base = load_run(tmp_path / "r8", "baseline", data=digits).model
    before = [m.out_channels for m in base.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c % 8 for c in counts["free"])  # without it, channel counts fall anywhere
    assert all(c % 8 == 0 for c in counts["r8"]) and sum(counts["r8"]) < 0.8 * sum(before)  # and still pruned


def test_prune_ignore_keeps_matching_layers_and_what_they_are_coupled_to(tmp_path, tiny, digits):
    chain = [{"technique": "prune", "ratio": 0.5, "global": False, "steps": 1, "epochs": 1,
              "ignore": ["blocks.[0-3]*"]}]
    run(tmp_path, tiny, digits, chain, model={"name": "resnet20", "width": 0.5})
    model = load(tmp_path, digits)
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    stage1 = [c for n, c in convs.items() if n.split(".")[1] in "0123"]
    assert stage1 and all(c == 8 for c in stage1)         # width 0.5 ResNet-20: stage 1 has 8 channels
    from chaincomp.chain import load_run
    base = {n: m.out_channels for n, m in load_run(tmp_path / "r", "baseline", data=digits).model.named_modules()
            if isinstance(m, torch.nn.Conv2d)}
    later = [n for n in convs if n.split(".")[1] not in "0123"]
    assert sum(convs[n] for n in later) < 0.8 * sum(base[n] for n in later)  # the rest is pruned
    with pytest.raises(UserError, match=r"prune\.ignore: 'nothing\*'"):
        run(tmp_path, tiny, digits, [{**chain[0], "ignore": ["nothing*"]}], name="bad",
            model={"name": "resnet20", "width": 0.5})


def test_distill_builds_narrower_student(tmp_path, tiny, digits):
    res = run(tmp_path, tiny, digits, [{"technique": "distill", "student": {"width": 0.5}, "epochs": 1}])
    assert res["stages"][0]["params"] < res["baseline"]["params"] / 2.5
    assert res["stages"][0]["notes"]["student"]["width"] == 0.25


def test_quantize_counts_bits(tmp_path, tiny, digits):
    res = run(tmp_path, tiny, digits, [{"technique": "quantize", "weight_bits": 4, "act_bits": 4,
                                         "first_last_bits": None, "epochs": 1}])
    s, b = res["stages"][0], res["baseline"]
    assert s["bitops"] == pytest.approx(b["bitops"] * 16 / 1024)
    assert s["macs"] == b["macs"]


@pytest.mark.parametrize("mode,cal", [("ptq", "minmax"), ("ptq", "percentile"), ("ptq", "mse")])
def test_post_training_quantization(tmp_path, tiny, digits, mode, cal):
    res = run(tmp_path, tiny, digits, [{"technique": "quantize", "weight_bits": 8, "act_bits": 8, "mode": mode,
                                         "calibration": cal}])
    assert res["stages"][0]["metric"] >= res["baseline"]["metric"] - 5


def test_early_exit_lowers_average_cost(tmp_path, tiny, digits):
    res = run(tmp_path, tiny, digits, [{"technique": "early_exit", "epochs": 6, "lr": 0.05, "threshold": 0.6}],
              baseline={"epochs": 6, "lr": 0.05, "batch_size": 64})
    s = res["stages"][0]
    assert sum(s["exit_histogram"]) == 120
    assert s["exit_histogram"][-1] < 120  # some inputs left early
    assert s["exit_rule"] == {"criterion": "confidence", "threshold": 0.6}
    assert isinstance(load(tmp_path, digits), ExitNetwork)


def test_exit_heads_are_quantized_after_quantize(tmp_path, tiny, digits):
    run(tmp_path, tiny, digits, [{"technique": "quantize", "weight_bits": 4, "act_bits": 4, "epochs": 1},
                                 {"technique": "early_exit", "epochs": 1}])
    model = load(tmp_path, digits)
    for head in model.exits.values():
        assert all(isinstance(m, QUANT_TYPES) for m in head.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
