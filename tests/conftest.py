import os

os.environ.setdefault("CHAINCOMP_QUIET", "1")

import pytest
import torch

torch.set_num_threads(1)


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
