"""Datasets by name. Loaders accept any user path; nothing here knows a compression technique."""
from __future__ import annotations

from .base import Split, TaskData


def load_data(cfg, seed: int = 0) -> TaskData:
    """Load the dataset a recipe's `data` section names (a DataConfig)."""
    name = cfg.name
    if name == "digits":
        from .digits import load_digits_data
        data = load_digits_data(seed=seed)
    elif name == "cifar10":
        from .cifar import load_cifar10
        data = load_cifar10(cfg.path, val_size=cfg.val_size, seed=seed, limit_train=cfg.limit_train,
                            limit_test=cfg.limit_test)
    elif name == "camvid":
        from .camvid import load_camvid
        data = load_camvid(cfg.path)
    elif name == "sr":
        from .sr import load_sr
        data = load_sr(cfg.path, scale=cfg.scale, seed=seed)
    elif name == "imagefolder":
        from .folders import load_imagefolder
        data = load_imagefolder(cfg.path, size=cfg.size, augment=cfg.augment.model_dump() if cfg.augment else None,
                                val_size=cfg.val_size, seed=seed)
    elif name == "sr_sample":
        from .sr import load_sr_sample
        data = load_sr_sample(scale=cfg.scale, seed=seed)
    else:  # the recipe schema admits no other name
        raise ValueError(name)
    if cfg.limit_train:
        data.train = data.train.subset(cfg.limit_train)
    if cfg.limit_test:
        data.test = data.test.subset(cfg.limit_test)
        data.val = data.val.subset(cfg.limit_test)
    return data


def model_kwargs(data: TaskData) -> dict:
    """What a zoo constructor needs to know of the data."""
    if data.task == "super_resolution":
        return {"scale": data.scale}
    return {"in_channels": data.in_channels, "num_classes": data.num_classes}


__all__ = ["Split", "TaskData", "load_data", "model_kwargs"]
