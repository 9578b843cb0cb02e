"""scikit-learn's 8x8 digits: ships inside the sklearn wheel, so it is the dataset a first run needs
no download or archive for (1,797 greyscale images, 10 classes)."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..errors import UserError
from .base import Split, TaskData
from .cifar import random_crop_flip


def load_digits_data(*, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                     augment: bool = False, limit_train: int | None = None,
                     limit_test: int | None = None) -> TaskData:
    """Digits as (N, 1, 8, 8) float32: pixel values 0..16 scaled to [0, 1], then normalised with the
    train split's mean/std (in `info`). Stratified test and val splits drawn with `seed`; fractions are
    of the whole set. `augment=True` adds a random shift of up to 1 pixel (no flip: digits are not
    mirror-symmetric); off by default because 8x8 digits are small enough that it mostly blurs classes.
    `limit_train` / `limit_test` keep the first that many of those (already shuffled) splits, as for
    CIFAR-10, so quick recipes can name them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
                        "and sum below 1")
    for name, v in (("limit_train", limit_train), ("limit_test", limit_test)):
        if v is not None and v < 1:
            raise UserError(f"{name}: {v} must be at least 1 (or left out for all images)")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, te = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    tr, va = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest],
                              random_state=seed)
    tr, te = tr[:limit_train], te[:limit_test]  # a None limit keeps all
    mean, std = float(x[tr].mean()), float(x[tr].std())

    def split(i: np.ndarray) -> Split:
        return Split(torch.from_numpy((x[i] - mean) / std), torch.from_numpy(y[i]))

    return TaskData(
        name="digits", task="classification", train=split(tr), val=split(va), test=split(te),
        in_channels=1, input_size=(8, 8), num_classes=10,
        augment=partial(random_crop_flip, pad=1, flip=False) if augment else None,
        info={"classes": [str(c) for c in range(10)], "mean": [mean], "std": [std], "seed": seed},
    )
