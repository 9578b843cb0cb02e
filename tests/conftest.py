import os

os.environ.setdefault("CHAINCOMP_QUIET", "1")

import pytest
import torch
import yaml

torch.set_num_threads(1)


def tiny_study_recipe(path, techniques=("prune", "quantize"), **data):
    """A recipe file for `order`/`search` that runs in seconds: 200 digits, 1 epoch per stage."""
    stages = {
        "distill": {"technique": "distill", "student": {"width": 0.5}, "epochs": 1, "batch_size": 64},
        "prune": {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64},
        "quantize": {"technique": "quantize", "weight_bits": 4, "act_bits": 8, "calibration": "minmax",
                     "calibration_batches": 1, "epochs": 1, "batch_size": 64},
        "early_exit": {"technique": "early_exit", "max_drop": 1.0, "epochs": 1, "batch_size": 64},
    }
    obj = {"name": "tiny", "seed": 0, "data": {"name": "digits", "limit_train": 200, **data},
           "model": {"name": "digits_cnn", "width": 0.5}, "baseline": {"epochs": 2, "batch_size": 32},
           "chain": [stages[t] for t in techniques]}
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def fails_with_one_line(capsys, argv, *words):
    """The CLI's contract for user mistakes: exit status 2 and one 'chaincomp: error:' line naming them."""
    from chaincomp.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("chaincomp: error:")
    for w in words:
        assert w in err, err


def tiny_recipe(chain=None, **over):
    """A recipe small enough for a test: 300 digits, one epoch per stage."""
    r = {
        "name": "tiny", "seed": 0,
        "data": {"name": "digits", "limit_train": 300, "limit_test": 120},
        "model": {"name": "digits_cnn", "width": 0.5},
        "baseline": {"epochs": 2, "lr": 0.05, "batch_size": 64},
        "chain": chain if chain is not None else [
            {"technique": "distill", "student": {"width": 0.5}, "epochs": 1, "batch_size": 64},
            {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64},
            {"technique": "quantize", "weight_bits": 4, "act_bits": 4, "epochs": 1, "batch_size": 64},
            {"technique": "early_exit", "epochs": 1, "batch_size": 64},
        ],
    }
    r.update(over)
    return r


@pytest.fixture
def tiny():
    return tiny_recipe


@pytest.fixture(scope="session")
def digits():
    """Digits cut to the tiny recipe's limits (run_chain takes given data as it is)."""
    from chaincomp.data.digits import load_digits_data
    d = load_digits_data(seed=0)
    d.train, d.val, d.test = d.train.subset(300), d.val.subset(120), d.test.subset(120)
    return d
