"""Recipe validation: every mistake is one line naming the field, exit status 2."""
import pytest
import yaml

from chaincomp.cli import main
from chaincomp.errors import UserError
from chaincomp.recipe import load_recipe, parse_recipe


@pytest.mark.parametrize("recipe,field", [
    ({"chain": [{"technique": "prune", "ratio": 1.5}]}, "chain.0.ratio"),
    ({"chain": [{"technique": "quantize", "weight_bits": 0}]}, "chain.0.weight_bits"),
    ({"chain": [{"technique": "quantize", "wieght_bits": 4}]}, "chain.0.wieght_bits"),
    ({"chain": [{"technique": "prune"}, {"technique": "sparsify"}]}, "chain.1"),
    ({"model": {"name": "digits_cnn", "width": "wide"}}, "model.width"),
    ({"baseline": {"epochs": -1}}, "baseline.epochs"),
    ({"datta": {}}, "datta"),
    ({"data": {"name": "camvid"}, "chain": [{"technique": "early_exit"}]}, "chain.0"),
])
def test_errors_name_the_field(recipe, field):
    with pytest.raises(UserError) as e:
        parse_recipe(recipe, "r.yaml")
    msg = str(e.value)
    assert msg.startswith(f"r.yaml: {field}") and "\n" not in msg


def test_builtin_default_is_valid():
    r, _ = load_recipe(None)
    assert r.techniques() == ["distill", "prune", "quantize", "early_exit"]


def test_all_shipped_recipes_are_valid():
    from chaincomp.recipe import builtin_recipes
    for name, text in builtin_recipes().items():
        if name.startswith(("exit_", "fmc_")):  # recipes of the exit and fmc commands have their own schema
            continue
        parse_recipe(yaml.safe_load(text), name)


def test_cli_exit_2_one_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("chain:\n  - technique: prune\n    ratio: 1.5\n")
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chain.0.ratio" in err[0]


def test_missing_files_and_bad_yaml(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.yaml")]) == 2
    p = tmp_path / "broken.yaml"
    p.write_text("chain: [\n")
    assert main(["check", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_missing_dataset_path(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(f"data: {{name: cifar10, path: {tmp_path / 'nothing-here'}}}\n")
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_weights_of_another_architecture(tmp_path, capsys):
    from chaincomp.io import save_weights
    from chaincomp.models import build_model
    w = tmp_path / "resnet.safetensors"
    save_weights(w, build_model("resnet20", in_channels=1, num_classes=10).state_dict())
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{name: digits_cnn, weights: {w}}}\nchain: []\n")
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    assert "do not fit" in capsys.readouterr().err
