"""`chaincomp train` trains a baseline once into the cache; every command naming the same baseline
(same data, model, budget, seed; any device) loads it instead of training again, and says so."""
import json

import pytest
import torch
import yaml

from chaincomp import baselines, progress
from chaincomp.cli import main
from chaincomp.io import load_weights
from chaincomp.recipe import parse_recipe
from conftest import tiny_recipe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINCOMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "baselines"


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(progress, "log", lines.append)
    return lines


def _recipe(tmp_path, name="r.yaml", **over):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tiny_recipe([{"technique": "quantize", "weight_bits": 8, "epochs": 0}], **over)))
    return str(p)


def test_the_digest_ignores_the_device_and_names_what_made_the_baseline():
    a = parse_recipe(tiny_recipe([]))
    assert baselines.digest(baselines.of_recipe(a)) == baselines.digest(
        baselines.of_recipe(parse_recipe(tiny_recipe([{"technique": "prune"}], device="cuda:0", name="other"))))
    for over in ({"seed": 1}, {"baseline": {"epochs": 3}}, {"model": {"name": "digits_cnn", "width": 0.75}},
                 {"data": {"name": "digits", "limit_train": 200}}, {"amp": True}):
        assert baselines.digest(baselines.of_recipe(parse_recipe(tiny_recipe([], **over)))) != \
            baselines.digest(baselines.of_recipe(a)), over


def test_train_once_then_run_reuses_it(cache, logged, tmp_path, capsys):
    r = _recipe(tmp_path)
    assert main(["train", r, "--device", "cpu"]) == 0
    assert "trained in" in capsys.readouterr().out
    (w,) = cache.glob("*.safetensors")
    rec = json.loads(w.with_suffix(".json").read_text())
    assert rec["device"] == "cpu" and rec["identity"]["seed"] == 0 and 0 <= rec["metric"] <= 100

    assert main(["train", r]) == 0                         # a second train is answered from the cache
    assert "already cached" in capsys.readouterr().out

    logged.clear()
    assert main(["run", r, "--out", str(tmp_path / "o")]) == 0
    assert any("reused from the cache" in line for line in logged)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["baseline"]["metric"] == rec["metric"]
    saved = load_weights(next((tmp_path / "o" / "checkpoints").glob("00-baseline.safetensors")))
    cached = load_weights(w)
    assert all(torch.equal(saved[k], cached[k]) for k in cached)   # the very weights, not a retrained twin


def test_another_seed_trains_its_own(cache, logged, tmp_path):
    assert main(["train", _recipe(tmp_path)]) == 0
    logged.clear()
    assert main(["run", _recipe(tmp_path, "s1.yaml", seed=1), "--out", str(tmp_path / "o")]) == 0
    assert not any("reused from the cache" in line for line in logged)


def test_a_damaged_cache_entry_is_trained_over(cache, tmp_path):
    r = _recipe(tmp_path)
    assert main(["train", r]) == 0
    (w,) = cache.glob("*.safetensors")
    w.write_bytes(b"not weights")
    assert main(["run", r, "--out", str(tmp_path / "o")]) == 0      # trains instead of failing


def test_the_order_study_starts_from_the_cached_baseline(cache, logged, tmp_path):
    from conftest import tiny_study_recipe

    r = tiny_study_recipe(tmp_path / "s.yaml")
    assert main(["train", r]) == 0
    logged.clear()
    assert main(["order", r, "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    assert any("reused from the cache" in line for line in logged)
