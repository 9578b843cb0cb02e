"""benchmarks/export_every_recipe.py on recipes/default.yaml at a tiny budget (digits, no external data):
the toy cut keeps the recipe's model and chain, and the default export (Q/DQ) passes its check."""
import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def script():
    spec = importlib.util.spec_from_file_location("export_every_recipe", ROOT / "benchmarks/export_every_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chain_recipes_are_the_chain_files_only():
    names = [p.stem for p in script().chain_recipes()]
    assert "default" in names and "cifar10_resnet20" in names and "cifar10_vgg19_converge" in names
    assert not any(n.startswith(("exit_", "fmc_")) for n in names)


def test_toy_cut_keeps_model_and_chain():
    mod = script()
    doc = yaml.safe_load((ROOT / "recipes/cifar10_resnet56_deploy.yaml").read_text())
    cut = mod.toy(doc, limit_train=300, limit_test=100, val_size=50, dataset_path="/x.zip")
    assert cut["model"] == doc["model"] and [s["technique"] for s in cut["chain"]] == \
        [s["technique"] for s in doc["chain"]]
    assert cut["baseline"]["epochs"] == 1 and all(s["epochs"] == 1 for s in cut["chain"])
    assert cut["chain"][1]["steps"] == 1 and cut["chain"][1]["ratio"] == doc["chain"][1]["ratio"]
    assert cut["data"] == {**doc["data"], "limit_train": 300, "limit_test": 100, "val_size": 50, "path": "/x.zip"}
    assert doc["baseline"]["epochs"] == 15          # the loaded document itself is untouched


def test_default_recipe_exports_qdq_and_passes_its_check(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINCOMP_CACHE", str(tmp_path / "cache"))
    mod = script()
    row = mod.export_recipe(ROOT / "recipes/default.yaml", tmp_path / "runs", limit_train=300, limit_test=120,
                            echo=lambda s: None)
    manifest = json.loads(Path(row["manifest"]).read_text())
    assert manifest["kernels"]["mode"] == "qdq" and manifest["check"]["passed"] is True
    assert row["passed"] and row["kernels"] == "qdq" and row["chain"] == ["distill", "prune", "quantize", "early_exit"]
    assert row["test"] == 120 and manifest["integer_ops"]
    # resumable-cheap: a second call reuses the recorded row instead of running again
    assert mod.export_recipe(ROOT / "recipes/default.yaml", tmp_path / "runs", echo=lambda s: None) == row
