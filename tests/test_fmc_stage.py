"""The fmc stage: in a chain, rebuilt from a checkpoint with its hooks, counted in dram_bytes."""
import pytest
import torch
from torch import nn

from chaincomp.chain import load_run, run_chain
from chaincomp.energy.cost import profile_model
from chaincomp.errors import UserError
from chaincomp.fmc import encode
from chaincomp.ledger import cost_profile
from chaincomp.models import build_model
from chaincomp.recipe import parse_recipe
from chaincomp.fmc.maps import FmcHooks, find_hooks, fit_block, resolve_points
from chaincomp.stages.fmc import FmcConfig

FMC = {"technique": "fmc", "mode": "cbr"}


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, digits):
    from conftest import tiny_recipe
    out = tmp_path_factory.mktemp("fmc") / "run"
    res = run_chain(parse_recipe(tiny_recipe([FMC])), out, data=digits, write_report=False)
    return res, out


def test_stage_in_chain_codes_maps_and_cuts_dram(chain_run, digits):
    res, out = chain_run
    assert [s["technique"] for s in res["stages"]] == ["fmc"]
    base = load_run(out, "baseline", data=digits)
    assert find_hooks(base.model) is None and "dram_bytes" in base.entry
    fmc = load_run(out, data=digits).entry
    assert fmc["dram_bytes"] < base.entry["dram_bytes"]
    assert fmc["fmc_ratio"] > 3 and "fmc_ratio" not in base.entry
    assert res["stages"][0]["fmc_ratio"] == fmc["fmc_ratio"]
    assert fmc["bitops"] == base.entry["bitops"] and fmc["params"] == base.entry["params"]
    assert abs(fmc["metric"] - base.entry["metric"]) <= 5  # 120 test digits, a 2-epoch model
    assert fmc["notes"]["fmc_points"] == {"blocks.0": [1, 8, 8], "blocks.1": [4, 4, 4], "blocks.2": [4, 4, 4],
                                          "blocks.3": [16, 2, 2]}


def test_rebuild_after_checkpoint_keeps_hooks(chain_run, digits):
    _, out = chain_run
    run = load_run(out, data=digits)
    hooks = find_hooks(run.model)
    assert hooks is not None and list(hooks.points) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert hooks.codec["mode"] == "cbr" and run.model.chaincomp_arch["transforms"][-1]["type"] == "fmc"
    x = digits.test.x[:4]
    with torch.no_grad():
        coded = run.model(x)
    assert hooks.total()["ratio"] > 3
    hooks.remove()
    with torch.no_grad():
        plain = run.model(x)
    assert find_hooks(run.model) is None and not torch.equal(coded, plain)


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_dram_bytes_count_the_streams():
    """The coded map is written by its producer and read by its consumer at the stream's length."""
    net, x = tiny_net().eval(), torch.rand(1, 1, 8, 8)
    plain = profile_model(net, x)
    hooks = FmcHooks(net, {"1": [1, 8, 8]}, {"bits_in": 16, "mode": "cbr", "index_bits": 3, "method": "asc",
                                             "scales": ["linear", "hlog"]})
    prof = cost_profile(net, x)  # no count yet: the stream of x itself
    with torch.no_grad():
        relu_out = net[1](net[0](x))
    n = len(encode(relu_out.detach(), mode="cbr"))
    assert n < relu_out.numel() * 4
    assert prof.layers[0].out_bytes == n and prof.layers[1].in_bytes == n
    assert prof.layers[1].out_bytes == plain.layers[1].out_bytes  # uncoded layer unchanged
    assert prof.total()["dram_bytes"] == plain.total()["dram_bytes"] - 2 * (relu_out.numel() * 4 - n)
    hooks.remove()
    assert cost_profile(net, x).total() == plain.total()


def test_auto_points_and_fit_block():
    net = build_model("resnet20", width=0.25)
    c = FmcConfig()
    pts = resolve_points(net, torch.zeros(1, 3, 32, 32), c.points, c.block, c.fit_block)
    assert "blocks.1.relu1" in pts and "blocks.1" in pts and "blocks.1.relu2" not in pts
    assert pts["blocks.0"] == [1, 8, 8] and pts["blocks.9"] == [1, 8, 8]  # 32x32 .. 8x8 maps
    assert fit_block((1, 8, 8), (1, 64, 4, 4)) == [4, 4, 4]
    assert fit_block((1, 8, 8), (1, 2, 4, 4)) == [2, 4, 4]
    assert fit_block((1, 8, 8), (1, 64, 16, 16)) == [1, 8, 8]


def test_second_fmc_replaces_hooks_and_chains_with_quantize(tmp_path, tiny, digits):
    chain = [{"technique": "quantize", "mode": "ptq", "epochs": 0, "calibration": "minmax"},
             {**FMC, "method": "minmax"}, {**FMC, "points": ["blocks.1"], "bits_in": 8}]
    run_chain(parse_recipe(tiny(chain, baseline={"epochs": 1, "batch_size": 64})), tmp_path / "r", data=digits,
              write_report=False)
    model = load_run(tmp_path / "r", data=digits).model
    hooks = find_hooks(model)
    assert list(hooks.points) == ["blocks.1"] and hooks.codec["bits_in"] == 8
    assert [n for n, m in model.named_modules() if hasattr(m, "chaincomp_fmc")] == ["", "blocks.1"]
    assert [t["type"] for t in model.chaincomp_arch["transforms"]] == ["quantize", "fmc", "fmc"]


def test_bad_config_names_the_field(tiny):
    with pytest.raises(UserError, match=r"chain\.0\.bits_in"):
        parse_recipe(tiny([{"technique": "fmc", "bits_in": 12}]))
    with pytest.raises(UserError, match=r"chain\.0\.block"):
        parse_recipe(tiny([{"technique": "fmc", "block": [1, 64, 64]}]))
    with pytest.raises(UserError, match="no module named"):
        FmcHooks(tiny_net(), {"nope": [1, 8, 8]}, {"bits_in": 16})


def test_point_on_a_swapped_layer_is_reattached():
    """quantize replaces conv layers; a point that is a conv gets its codec back when measured."""
    from chaincomp.ledger import _fmc
    from chaincomp.qmodules import QuantPlan, apply_quant

    net, x = tiny_net().eval(), torch.rand(2, 1, 8, 8)
    hooks = FmcHooks(net, {"0": [1, 8, 8], "1": [1, 8, 8]}, {"bits_in": 16, "mode": "cbr"})
    apply_quant(net, QuantPlan(weight_bits=8, act_bits=8, first_last_bits=None))
    assert _fmc(net) is hooks and hooks.modules["0"] is net[0] and net[0].chaincomp_fmc is hooks
    with torch.no_grad():
        net(x)
    assert hooks.stats()["0"]["calls"] == 1 and hooks.stats()["1"]["calls"] == 1
    hooks.remove()
    assert not any(hasattr(m, "chaincomp_fmc") for m in net.modules())


def test_quantize_transform_keeps_codec_on_a_hooked_conv():
    """arch.apply_transform (stage and checkpoint rebuild) re-attaches the codec itself: the model
    stays coded without going through the ledger."""
    from chaincomp.stages import replay as apply_transform
    from chaincomp.qmodules import QuantConv2d

    net, x = tiny_net().eval(), torch.rand(2, 1, 8, 8)
    hooks = FmcHooks(net, {"0": [1, 8, 8]}, {"bits_in": 16, "mode": "cbr"})
    plan = {"weight_bits": 8, "act_bits": 8, "first_last_bits": None}
    net = apply_transform(net, {"type": "quantize", "plan": plan}, x)
    assert isinstance(net[0], QuantConv2d) and hooks.modules["0"] is net[0]
    with torch.no_grad():
        net(x)
    assert hooks.stats()["0"]["calls"] == 1
