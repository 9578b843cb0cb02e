"""The chain: every order of the four techniques runs, and each stage keeps what earlier ones did."""
import itertools

import pytest
import torch

from chaincomp.chain import load_run, run_chain
from chaincomp.exits.model import ExitNetwork
from chaincomp.io import save_weights
from chaincomp.qmodules import QUANT_TYPES, is_quantized
from chaincomp.recipe import parse_recipe

STAGE = {
    "distill": {"technique": "distill", "student": {"width": 0.75}, "epochs": 1, "batch_size": 64},
    "prune": {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64},
    "quantize": {"technique": "quantize", "weight_bits": 4, "act_bits": 6, "epochs": 1, "batch_size": 64},
    "early_exit": {"technique": "early_exit", "epochs": 1, "batch_size": 64, "threshold": 0.9},
}


@pytest.fixture(scope="module")
def baseline_weights(tmp_path_factory, digits):
    from chaincomp.chain import train_baseline
    from conftest import tiny_recipe
    r = parse_recipe(tiny_recipe([]))
    model = train_baseline(r, digits)
    p = tmp_path_factory.mktemp("w") / "base.safetensors"
    save_weights(p, model.state_dict())
    return str(p)


def conv_widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("order", list(itertools.permutations(STAGE)), ids=lambda o: "".join(t[0] for t in o))
def test_every_order(order, tmp_path, tiny, digits, baseline_weights):
    r = parse_recipe(tiny([STAGE[t] for t in order], model={"name": "digits_cnn", "width": 0.5,
                                                            "weights": baseline_weights}))
    res = run_chain(r, tmp_path / "run", data=digits, write_report=False)
    model = load_run(tmp_path / "run", data=digits).model
    names = [s["technique"] for s in res["stages"]]
    assert names == list(order)
    q_at, e_at = order.index("quantize"), order.index("early_exit")
    assert is_quantized(model)  # whatever came after, the bits stay
    assert isinstance(model, ExitNetwork)  # exits survive later stages; a student gets the teacher's exits
    if e_at > q_at:  # heads added to a quantized model are quantized too
        for head in model.exits.values():
            assert all(isinstance(m, QUANT_TYPES) for m in head.modules()
                       if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    # pruning sticks: no later stage (except a student from distillation) widens the network again
    p_at = order.index("prune")
    d_at = order.index("distill")
    if d_at < p_at:
        st = res["stages"]
        for k in range(p_at + 1, len(st)):
            if st[k]["technique"] != "early_exit":
                assert st[k]["params"] <= st[k - 1]["params"]
    assert res["final"]["bitops_reduction"] > 1
    assert res["final"]["bitops"] == res["stages"][-1]["bitops"]


def test_results_json_and_report(tmp_path, tiny, digits):
    import json
    r = parse_recipe(tiny())
    run_chain(r, tmp_path / "run", data=digits)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["task"] == "classification" and res["metric_name"] == "top1"
    for k in ("metric", "bitops", "macs", "params", "size_bytes", "dram_bytes"):
        assert k in res["baseline"]
        assert all(k in s for s in res["stages"])
    assert res["final"]["bitops_reduction"] == pytest.approx(res["baseline"]["bitops"] / res["final"]["bitops"], rel=1e-3)
    assert res["final"]["dram_reduction"] == pytest.approx(res["baseline"]["dram_bytes"] / res["final"]["dram_bytes"],
                                                           rel=1e-3)
    assert res["final"]["dram_reduction"] > 1  # fewer channels and bits move fewer bytes
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("|") > 10 and "DRAM KiB" in report
    assert (tmp_path / "run" / "metric_vs_bitops.png").stat().st_size > 1000


def test_same_seed_same_ledger(tmp_path, tiny, digits):
    r = parse_recipe(tiny())
    a = run_chain(r, tmp_path / "a", data=digits, write_report=False)
    b = run_chain(r, tmp_path / "b", data=digits, write_report=False)
    strip = lambda res: [{k: v for k, v in s.items() if k != "seconds"} for s in res["stages"]]
    assert strip(a) == strip(b) and a["baseline"] == b["baseline"]


def test_api_one_line(tmp_path, digits):
    from chaincomp import compress
    out = compress("digits_cnn", digits, chain=["prune", {"technique": "quantize", "weight_bits": 4, "epochs": 1}],
                   baseline={"epochs": 1}, width=0.5, out=tmp_path / "api")
    assert out.results["final"]["bitops_reduction"] > 10
    assert is_quantized(out.model)
