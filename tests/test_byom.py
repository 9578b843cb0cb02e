"""Bring your own model and images: networks the zoo does not have, defined in the user's own module, and
an image folder, through every technique, checkpoints, resume and export, from the API and a recipe."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import byom_nets
from chaincomp import compress
from chaincomp.chain import load_run
from chaincomp.cli import main
from chaincomp.data.folders import from_datasets, load_imagefolder
from chaincomp.deploy.export import export_run
from chaincomp.errors import UserError
from chaincomp.models.imported import allow_imports, instantiate, to_blocks
from chaincomp.qmodules import QuantConv2d, QuantLinear
from conftest import fails_with_one_line

NETS = ["BottleneckResNet", "MobileNetV2", "SENet", "ConcatNet"]
ADAM = {"optimizer": "adam", "batch_size": 32}
CHAIN = [{"technique": "distill", "student": {"width": 0.5}, "epochs": 3, "lr": 0.01, **ADAM},
         {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "lr": 0.003, **ADAM},
         {"technique": "quantize", "weight_bits": 8, "act_bits": 8, "epochs": 1, "lr": 0.001, "calibration_batches": 2,
          **ADAM},
         {"technique": "early_exit", "epochs": 1, "max_drop": 5.0, "lr": 0.003, **ADAM}]
BASELINE = {"epochs": 4, "lr": 0.01, **ADAM}
DIGITS = {"name": "digits", "limit_train": 300, "limit_test": 400}


def image_tree(root: Path, classes: int = 3, n_train: int = 16, n_test: int = 6, size: int = 12) -> Path:
    """A greyscale class-per-folder tree: class k is a bright band at row-block k, plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size), dtype=np.uint8)
                img[k * size // classes:(k + 1) * size // classes] += 150
                Image.fromarray(img, mode="L").save(d / f"{i}.png")
    return root


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's own module, in their own folder, on the import path under a name the project never saw."""
    folder = tmp_path / "mycode"
    folder.mkdir()
    shutil.copy(Path(byom_nets.__file__), folder / "my_vision_nets.py")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_cut_into_blocks_keeps_the_function_and_finds_exit_points():
    for name in NETS:
        torch.manual_seed(0)
        m = getattr(byom_nets, name)().eval()
        x = torch.randn(2, 3, 16, 16)
        net = to_blocks(m, x).eval()
        assert torch.allclose(net(x), m(x), atol=1e-6), name
        assert net.auto_exits, name
    mb = to_blocks(byom_nets.MobileNetV2().eval(), torch.randn(2, 3, 16, 16))
    # stride-2 blocks and residual blocks are exit points; module paths name the blocks they end
    assert mb.module_ends["features.3"] in mb.auto_exits and "features.3.conv.0" not in mb.module_ends


def test_import_spec_security(tmp_path, capsys, user_module):
    marker = tmp_path / "ran"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"import": "os:system", "kwargs": {"command": f"touch {marker}"}},
                                      "data": DIGITS, "baseline": {"epochs": 0}}))
    fails_with_one_line(capsys, ["run", str(recipe), "--out", str(tmp_path / "o")], "model.import", "os:system",
                        "--allow-import")
    assert not marker.exists()          # the command never ran
    with pytest.raises(UserError, match="not an nn.Module class"):
        instantiate("my_vision_nets:make_concat", {})
    with allow_imports(["my_vision_nets"]):
        assert isinstance(instantiate("my_vision_nets:make_concat", {"num_classes": 4}), torch.nn.Module)
        with pytest.raises(UserError, match="returned int, not an nn.Module"):
            instantiate("my_vision_nets:not_a_model", {})
    with pytest.raises(UserError, match="does not import"):
        instantiate("no_such_pkg_xyz:Net", {})
    with pytest.raises(UserError, match="kwargs.*failed"):
        instantiate("my_vision_nets:ConcatNet", {"nope": 1})   # a class is called freely, but must accept them


def test_check_resolves_import_specs_without_calling_them(tmp_path, capsys, user_module):
    marker = tmp_path / "ran"
    recipe = tmp_path / "r.yaml"

    def write(model, chain=()):
        recipe.write_text(yaml.safe_dump({"model": model, "data": DIGITS, "chain": list(chain)}))
        return str(recipe)

    student = {"technique": "distill", "student": {"import": "my_vision_nets:ConcatNet"}}
    assert main(["check", write({"import": "my_vision_nets:SENet"}, [student])]) == 0
    out = capsys.readouterr().out
    assert "model.import my_vision_nets:SENet resolves" in out and "chain[0].student.import" in out
    fails_with_one_line(capsys, ["check", write({"import": "os:system", "kwargs": {"command": f"touch {marker}"}})],
                        "model.import", "os:system", "--allow-import")
    assert not marker.exists()                      # refused before anything is called
    fails_with_one_line(capsys, ["check", write({"import": "no_such_pkg_xyz:Net"})], "model.import", "does not import")
    fails_with_one_line(capsys, ["check", write({"import": "my_vision_nets:SENet"},
                                                [{"technique": "distill", "student": {"import": "my_vision_nets:Nope"}}])],
                        "chain[0].student.import", "has no 'Nope'")
    fails_with_one_line(capsys, ["check", write({"import": "my_vision_nets:SENet", "weights": str(tmp_path / "w.st")})],
                        "model.weights", "not found")
    factory = write({"import": "my_vision_nets:make_concat"})
    fails_with_one_line(capsys, ["check", factory], "model.import", "--allow-import my_vision_nets")
    assert main(["check", factory, "--allow-import", "my_vision_nets"]) == 0


def test_api_allow_import_lets_a_factory_run(tmp_path, user_module):
    spec = {"import": "my_vision_nets:make_concat", "kwargs": {"num_classes": 10, "in_channels": 1}}
    with pytest.raises(UserError, match="allow_import"):
        compress(spec, DIGITS, baseline={"epochs": 0}, out=tmp_path / "a")
    r = compress(spec, DIGITS, baseline={"epochs": 0}, out=tmp_path / "b", allow_import=["my_vision_nets"])
    assert r.results["model"] == "my_vision_nets:make_concat" and r.results["baseline"]["params"] > 0


def test_imagefolder_keeps_greyscale_and_splits_by_seed(tmp_path):
    root = image_tree(tmp_path / "imgs")
    d = load_imagefolder(str(root), val_size=6, seed=1)
    assert d.in_channels == 1 and d.input_size == (12, 12) and d.num_classes == 3
    assert len(d.val) == 6 and len(d.train) == 42 and len(d.test) == 18
    again = load_imagefolder(str(root), val_size=6, seed=1)
    assert torch.equal(d.val.x, again.val.x)
    assert not torch.equal(d.val.x, load_imagefolder(str(root), val_size=6, seed=2).val.x)
    r = load_imagefolder(str(root), size=(8, 10), augment={"flip": True, "crop": 2})
    assert r.input_size == (8, 10) and r.augment is not None
    zipped = shutil.make_archive(str(tmp_path / "imgs"), "zip", root)
    assert torch.equal(load_imagefolder(zipped, val_size=6, seed=1).test.x, d.test.x)


def test_dataset_pair_is_data():
    g = torch.Generator().manual_seed(0)
    train = [(torch.randn(1, 8, 8, generator=g), i % 3) for i in range(30)]
    test = [(torch.randn(1, 8, 8, generator=g), i % 3) for i in range(9)]
    d = from_datasets(train, test, seed=0)
    assert (d.in_channels, d.input_size, d.num_classes, len(d.val), len(d.test)) == (1, (8, 8), 3, 6, 9)
    with pytest.raises(UserError, match="item 0"):
        from_datasets([(1, 2)], test)


# The default export (Q/DQ: the int8 pass's graph, 8-bit codes between layers, fused by ORT into QLinearConv),
# checked against PyTorch on the user's models too; the manifest's Q/DQ op count is asserted as well.
# Tolerance 1 point: these tiny, barely trained models have near ties, and one flipped answer of the 360
# digits is 0.28 points; agreement of the predictions is asserted as well, at 90%: MobileNetV2 (26% top-1 here)
# agreed on 97%+ of the answers on an AVX2 EPYC and on 93.1% on an AVX-512/VNNI Xeon (same metric within 0.28
# points, every exit decision the same): its residual streams take 8-bit codes in ORT and stay float in
# PyTorch, and the kernels' requantization rounds ties otherwise there.
KERNELS, TOLERANCE = "qdq", "1.0"


def _exported(out: Path, **kw) -> dict:
    m = export_run(out, out=out / "export" / "model.onnx", echo=lambda *_: None, kernels=KERNELS,
                   tolerance=float(TOLERANCE), **kw)
    c = m["check"]
    assert c["passed"] and c["prediction_agreement"] >= 90, {k: c[k] for k in ("torch_metric", "onnx_metric", "n",
                                                                                  "prediction_agreement")}
    return m


@pytest.mark.parametrize("name", NETS)
def test_every_technique_from_the_api(name, tmp_path):
    torch.manual_seed(0)
    kw = {"widths": (4, 8)} if name == "BottleneckResNet" else {}
    user_model = getattr(byom_nets, name)(num_classes=10, in_channels=1, **kw)
    before = {k: v.clone() for k, v in user_model.state_dict().items()}
    r = compress(user_model, DIGITS, chain=CHAIN, baseline=BASELINE, out=tmp_path / "o")
    assert all(torch.equal(v, user_model.state_dict()[k]) for k, v in before.items())   # the user's object untouched
    base, stages = r.results["baseline"], r.results["stages"]
    assert [s["technique"] for s in stages] == ["distill", "prune", "quantize", "early_exit"]
    assert stages[0]["params"] < base["params"] and stages[1]["params"] < stages[0]["params"]
    assert stages[2]["bitops"] < stages[1]["bitops"] / 3          # 8-bit weights and activations
    assert r.model.exit_points and len(stages[3]["exit_histogram"]) == len(r.model.exit_points) + 1
    layers = [m for m in r.model.modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear, QuantConv2d, QuantLinear)]
    assert layers and all(isinstance(m, (QuantConv2d, QuantLinear)) for m in layers)   # depthwise, SE, exits too
    if name == "MobileNetV2":
        assert any(isinstance(m, QuantConv2d) and m.groups == m.in_channels > 1 for m in layers)
    with allow_imports(given={"model": user_model}):
        run = load_run(r.out)                                     # rebuilt from the checkpoint
        assert run.entry == json.loads((r.out / "checkpoints" / "04-early_exit.json").read_text())["entry"]
        m = _exported(r.out)
    assert m["kind"] == "exits" and m["kernels"]["kind"] == "int8" and m["kernels"]["mode"] == KERNELS
    assert m["integer_ops"].get("QLinearConv", 0) >= 1, m["ort_ops"]     # ORT fused the Q/DQ convs
    with pytest.raises(UserError, match="passed to compress"):
        load_run(r.out)                                           # a given model must be given again


def _recipe(tmp_path: Path, name: str, tree: Path, **model) -> Path:
    obj = {"name": f"byom-{name}", "seed": 0,
           "data": {"name": "imagefolder", "path": str(tree), "val_size": 9, "augment": {"flip": True}},
           "model": {"import": f"my_vision_nets:{name}", "kwargs": {"num_classes": 3, "in_channels": 1}, **model},
           "baseline": BASELINE | {"batch_size": 16, "epochs": 6},
           "chain": [CHAIN[0] | {"batch_size": 16}, CHAIN[1] | {"batch_size": 16},
                     CHAIN[2] | {"batch_size": 16}, CHAIN[3] | {"batch_size": 16, "points": "all"}]}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(obj))
    return p


@pytest.mark.parametrize("name", NETS)
def test_every_technique_from_a_recipe(name, tmp_path, user_module, capsys):
    tree = image_tree(tmp_path / "my_images", n_train=30)
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, name, tree)), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == f"my_vision_nets:{name}" and res["dataset"] == "imagefolder"
    assert res["baseline"]["metric"] > 50          # 3 classes: the baseline learned the user's images
    assert main(["export", str(out), "--format", KERNELS, "--tolerance", TOLERANCE]) == 0
    manifest = json.loads((out / "export" / "model.manifest.json").read_text())
    assert manifest["check"]["passed"] and manifest["check"]["prediction_agreement"] >= 97 and manifest["kind"] == "exits"
    assert manifest["input"]["shape"] == ["batch", 1, 12, 12]


def test_named_exit_points_and_student_import(tmp_path, user_module):
    tree = image_tree(tmp_path / "imgs")
    p = _recipe(tmp_path, "MobileNetV2", tree)
    obj = yaml.safe_load(p.read_text())
    obj["chain"] = [{"technique": "distill", "student": {"import": "my_vision_nets:ConcatNet",
                                                         "kwargs": {"num_classes": 3, "in_channels": 1}},
                     "epochs": 1, "batch_size": 16},
                    {"technique": "early_exit", "points": ["pool"], "epochs": 1, "batch_size": 16},
                    {"technique": "fmc", "points": "auto"}]
    p.write_text(yaml.safe_dump(obj))
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 0
    run = load_run(tmp_path / "o")
    assert run.model.exit_points == [run.model.module_ends["pool"]]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    fmc_points = res["stages"][2]["notes"]["fmc_points"]       # block outputs, found on the traced graph
    assert res["stages"][2]["fmc_ratio"] > 1 and "blocks.0" in fmc_points
    assert res["stages"][2]["dram_bytes"] < res["stages"][1]["dram_bytes"]
    assert any(n.endswith(".b1.0") for n, _ in run.model.named_modules())   # the student is the ConcatNet
    obj["chain"][1]["points"] = ["stem.0"]       # inside a block: no single map carries everything there
    p.write_text(yaml.safe_dump(obj))
    with pytest.raises(UserError, match="does not end a block"):
        from chaincomp.chain import run_chain
        from chaincomp.recipe import load_recipe
        run_chain(load_recipe(str(p))[0], tmp_path / "o2")


class Branchy(torch.nn.Module):
    """Control flow that depends on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_a_model_that_does_not_trace_is_one_line(tmp_path):
    with pytest.raises(UserError, match="Branchy does not trace with torch.fx") as e:
        compress(Branchy(), DIGITS, chain=["prune"], out=tmp_path / "o")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", NETS)
def test_resume_after_a_kill(name, tmp_path, user_module):
    tree = image_tree(tmp_path / "imgs")
    recipe = _recipe(tmp_path, name, tree)
    env = {**os.environ, "CHAINCOMP_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(user_module), os.environ.get("PYTHONPATH", "")])}
    env.pop("CHAINCOMP_KILL_AT", None)

    def run(out, *extra, kill=None):
        e = {**env, **({"CHAINCOMP_KILL_AT": kill} if kill else {})}
        return subprocess.run([sys.executable, "-m", "chaincomp", "run", str(recipe), "--out", str(out), *extra],
                              env=e, capture_output=True, text=True, timeout=600)

    def ledger(out):
        res = json.loads((out / "results.json").read_text())
        return res["baseline"], [{k: v for k, v in s.items() if k != "seconds"} for s in res["stages"]]

    assert run(tmp_path / "ref").returncode == 0
    # killed after a stage's weights were written but not its JSON: the distill, prune, quantize or exit stage
    at = {"SENet": 2, "ConcatNet": 3, "BottleneckResNet": 4, "MobileNetV2": 5}[name]
    p = run(tmp_path / "o", kill=f"between_weights_and_json:{at}")
    assert p.returncode == -9, p.stderr
    p = run(tmp_path / "o", "--resume")
    assert p.returncode == 0, p.stderr
    assert ledger(tmp_path / "o") == ledger(tmp_path / "ref")


def test_import_spec_with_weights_starts_from_them(tmp_path, user_module):
    from chaincomp.arch import initial_model
    from chaincomp.io import save_weights
    from chaincomp.recipe import ModelConfig
    import my_vision_nets

    torch.manual_seed(3)
    user = my_vision_nets.SENet(num_classes=3, in_channels=1).eval()
    save_weights(tmp_path / "w.safetensors", user.state_dict())
    cfg = ModelConfig.model_validate({"import": "my_vision_nets:SENet", "kwargs": {"num_classes": 3, "in_channels": 1},
                                      "weights": str(tmp_path / "w.safetensors")})
    x = torch.randn(2, 1, 8, 8)
    model, loaded = initial_model(cfg, x, {})
    assert loaded and torch.equal(model.eval()(x), user(x))
    assert model.chaincomp_arch["model"] == {"import": "my_vision_nets:SENet",
                                             "kwargs": {"num_classes": 3, "in_channels": 1}, "input": [1, 8, 8]}
    bad = cfg.model_copy(update={"kwargs": {"num_classes": 5, "in_channels": 1}})
    with pytest.raises(UserError, match="weights: do not fit"):
        initial_model(bad, x, {})


class WithConv1d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.seq = torch.nn.Conv1d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(self.seq(x.flatten(2)).mean(2))


def test_a_layer_quantize_cannot_take_is_named_not_skipped(tmp_path):
    with pytest.raises(UserError, match=r"module head\.seq \(Conv1d\)"):
        compress(WithConv1d(), DIGITS, chain=[{"technique": "quantize", "epochs": 0}], out=tmp_path / "o")
