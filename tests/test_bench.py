"""Bench: bench.json/bench.md carry every figure for every batch size and model (never asserting on
speed: only that figures exist, are positive and are consistent), and bad arguments exit 2."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml

from chaincomp.deploy.bench import bench_run, inputs_for, stats
from chaincomp.chain import run_chain
from chaincomp.cli import main
from chaincomp.data.base import Split
from chaincomp.data.digits import load_digits_data
from chaincomp.recipe import parse_recipe

FAST = {"epochs": 1, "lr": 0.02, "batch_size": 64}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = load_digits_data(seed=0)
    data.train = Split(data.train.x[:300], data.train.y[:300])
    obj = {"name": "bench", "seed": 0, "model": {"name": "digits_cnn", "width": 0.5},
           "baseline": {"epochs": 3, "lr": 0.05, "batch_size": 32},
           "chain": [{"technique": "prune", "ratio": 0.4, "steps": 1, **FAST},
                     {"technique": "quantize", "weight_bits": 4, "act_bits": 4, **FAST},
                     {"technique": "early_exit", "points": [1], "threshold": 0.13, **FAST, "epochs": 2, "lr": 0.05}]}
    out = tmp_path_factory.mktemp("bench") / "run"
    torch.manual_seed(0)
    run_chain(parse_recipe(obj), out, data=data, write_report=False, recipe_text=yaml.safe_dump(obj))
    return out, data


def test_bench_writes_figures(run):
    out, data = run
    lines = []
    res = bench_run(out, [8, 1], runs=3, warmup=1, peer_epochs=0, data=data, echo=lines.append)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["batches"] == res["batches"] and [r["batch"] for r in saved["batches"]] == [1, 8]
    ov = importlib.util.find_spec("openvino") is not None
    assert set(saved["models"]) == {"baseline", "compressed", "compressed_qop", "ort_int8", "tp_prune",
                                    *(["qdq_openvino"] if ov else [])}
    for r in saved["batches"]:
        for key in ("baseline_ms", "compressed_ms", "speedup", "baseline_metric", "compressed_metric"):
            assert r[key] > 0, key
        for name in saved["models"]:
            s = r[name]
            assert s["median_ms"] > 0 and s["iqr_ms"] >= 0 and s["throughput_per_s"] > 0 and s["n"] == 3
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["compressed_ms"], rel=1e-2)
    m = saved["models"]
    assert m["compressed"]["bitops_reduction"] > 1 and m["baseline"]["bitops_reduction"] == 1
    assert m["compressed"]["kind"] == "exits" and m["compressed"]["kernels"]["kernel_bits"] == 8
    assert m["compressed"]["integer_ops"]["QLinearConv"] >= 3 and "ConvInteger" not in m["compressed"]["integer_ops"]
    assert m["ort_int8"]["integer_ops"], m["ort_int8"]["ort_ops"]
    # the default file is Q/DQ; ORT fuses it into the very integer ops of the QOperator file timed beside it
    assert m["compressed"]["format"] == "qdq" and m["compressed_qop"]["format"] == "qop"
    assert abs(m["compressed_qop"]["metric"] - m["compressed"]["metric"]) <= 0.5
    assert m["compressed"]["integer_ops"]["QLinearConv"] == m["compressed_qop"]["integer_ops"]["QLinearConv"]
    assert "chaincomp (run, Q/DQ file)" in (out / "bench.md").read_text()
    if ov:  # the same Q/DQ file in OpenVINO: the same metric up to a few inputs, convolutions on integer kernels.
        # Its int8 kernels (VNNI or AMX) round some accumulators otherwise than ORT's, and this weakly trained
        # exit model (~31%) has many borderline logits and exit confidences: 2 of 360 inputs flipped on a Xeon
        assert abs(m["qdq_openvino"]["metric"] - m["compressed"]["metric"]) <= 4 * 100 / len(data.test) + 1e-6
        assert m["qdq_openvino"]["integer_ops"].get("Convolution", 0) >= 1, m["qdq_openvino"]
        assert m["qdq_openvino"]["runtime"].startswith("openvino")
        # its file has portable (int8 symmetric) weights, and every conv/FC ran on integer kernels
        assert m["qdq_openvino"]["weights"]["form"] == "portable" and m["qdq_openvino"]["weights"]["target"] == "openvino"
        assert m["qdq_openvino"]["openvino_kernels"]["integer"], m["qdq_openvino"]["openvino_kernels"]
        assert "OpenVINO ran all" in (out / "bench.md").read_text()
    assert m["compressed"]["weights"]["form"] in ("ort", "portable") and m["compressed"]["weights"]["why"]
    assert m["tp_prune"]["info"]["finetune_epochs"] == 0 and m["tp_prune"]["info"]["ratio"] == 0.4
    assert not m["baseline"]["integer_ops"]
    assert saved["thread_spinning"] is False
    md = (out / "bench.md").read_text()
    assert "(spinning off)" in md
    assert "BitOps reduction (counted)" in md and "speed-up b=8" in md and "Torch-Pruning" in md
    assert any("bench.json" in line for line in lines)


def test_session_spinning_switch(tmp_path):
    """Bench's sessions must not busy-wait between their turns; a lone deployed session may."""
    import onnx
    from onnx import TensorProto, helper

    from chaincomp.deploy.runtime import session
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx_file = tmp_path / "relu.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8              # what this ONNX Runtime reads
    onnx.save(model, str(onnx_file))
    key = "session.intra_op.allow_spinning"
    assert session(onnx_file, 2, spinning=False).get_session_options().get_session_config_entry(key) == "0"
    assert session(onnx_file, 2).get_session_options().get_session_config_entry(key) == "1"


def test_inputs_and_stats(run):
    _, data = run
    xs = inputs_for(data, 500, count=4)  # larger than the test split: repeated, still distinct batches
    assert len(xs) == 4 and all(x.shape == (500, 1, 8, 8) for x in xs)
    s = stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0 and s["iqr_ms"] > 0 and s["min_ms"] == 1.0


@pytest.mark.parametrize("args,why", [(["--batch", "0"], "--batch"), (["--batch", "100000"], "--batch"),
                                      (["--batch", "-3"], "--batch"), (["--runs", "0"], "--runs"),
                                      (["--warmup", "-1"], "--warmup"), (["--threads", "0"], "--threads")])
def test_bad_bench_arguments(run, args, why, capsys):
    out, _ = run
    assert main(["bench", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chaincomp: error:") and why in err[0]


def test_bench_bad_run_dir(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "not a chaincomp run folder" in capsys.readouterr().err


def test_smaller_peers_front(run):
    """--smaller-peers: the zoo's smaller networks, trained with the baseline budget and int8 by ORT, are
    timed beside the compressed model, and bench.md says whether any is both as accurate and as fast."""
    from chaincomp.deploy.bench import smaller_specs

    assert smaller_specs("resnet56", 1.0) == [("resnet8", 1.0), ("resnet14", 1.0), ("resnet20", 1.0), ("resnet32", 1.0)]
    assert smaller_specs("resnet20", 1.0) == [("resnet8", 1.0), ("resnet14", 1.0)]
    assert smaller_specs("digits_cnn", 0.5) == [("digits_cnn", 0.125), ("digits_cnn", 0.25)]
    out, data = run
    res = bench_run(out, [1], runs=3, warmup=1, peers=False, data=data, echo=lambda s: None, smaller=True)
    small = [n for n in res["models"] if n.startswith("small_")]
    assert small == ["small_digits_cnn_w0.125", "small_digits_cnn_w0.25"]
    for n in small:
        m = res["models"][n]
        assert m["kind"] == "ort-static-int8" and m["integer_ops"] and 0 <= m["metric"] <= 100
        assert res["batches"][0][n]["median_ms"] > 0
    md = (out / "bench.md").read_text()
    assert "smaller networks" in md and ("dominated by" in md or "above the smaller" in md)
