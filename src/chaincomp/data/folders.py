"""The `imagefolder` dataset: any class-per-folder image tree of the user's, in a folder or a zip.

    DIR_OR_ZIP/train/<class>/*.png   DIR_OR_ZIP/test/<class>/*.png   [DIR_OR_ZIP/val/<class>/*.png]

Without val/, a seeded split of train (`val_size` images, at most a fifth) is the validation split.
Images keep their own size and channel count (a greyscale tree stays one channel) unless `size`
resizes them; normalised by the training split's per-channel mean and std. `augment` adds random
crops (zero-padded by `crop` pixels) and horizontal flips to training batches.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..errors import UserError
from .base import Split, TaskData
from .cifar import random_crop_flip
from .imagefolder import channel_stats, image_mode, list_image_folder, normalized_tensor, open_tree, read_image_folder


def load_imagefolder(path: str | None, *, size: tuple[int, int] | None = None, augment: dict | None = None,
                     val_size: int = 5000, seed: int = 0, skip_bad: bool = False) -> TaskData:
    if not path:
        raise UserError("data.path: the imagefolder dataset needs a path (a folder or zip with train/ and test/)")
    tree = open_tree(path)
    train_list = list_image_folder(tree, "train")
    mode = image_mode(tree.read(train_list.files[0]), tree.where(train_list.files[0]))
    kw = dict(size=tuple(size) if size else None, resize=size is not None, skip_bad=skip_bad, mode=mode)
    train = read_image_folder(tree, "train", **kw)
    kw["size"] = kw["size"] or tuple(train.images.shape[1:3])
    kw["resize"] = size is not None
    test = read_image_folder(tree, "test", classes=train.classes, **kw)
    if tree.is_dir("val"):
        val = read_image_folder(tree, "val", classes=train.classes, **kw)
        vx, vy, tx, ty = val.images, val.labels, train.images, train.labels
    else:
        n = len(train.labels)
        nv = min(val_size, n // 5)
        if nv < 1:
            raise UserError(f"{path}: train/ holds {n} images; a validation split needs at least 5 (or add val/)")
        perm = np.random.default_rng(seed).permutation(n)
        vx, vy = train.images[perm[:nv]], train.labels[perm[:nv]]
        tx, ty = train.images[perm[nv:]], train.labels[perm[nv:]]
    mean, std = channel_stats(tx)
    aug = None
    if augment and (augment.get("flip") or augment.get("crop")):
        aug = partial(random_crop_flip, pad=int(augment.get("crop") or 0), flip=bool(augment.get("flip")))
    t = lambda u8: normalized_tensor(u8, mean, std)  # noqa: E731
    return TaskData(name="imagefolder", task="classification",
                    train=Split(t(tx), torch.from_numpy(ty)), val=Split(t(vx), torch.from_numpy(vy)),
                    test=Split(t(test.images), torch.from_numpy(test.labels)),
                    in_channels=int(tx.shape[3]), input_size=(int(tx.shape[1]), int(tx.shape[2])),
                    num_classes=len(train.classes), augment=aug,
                    info={"classes": train.classes, "mean": mean.tolist(), "std": std.tolist(), "source": str(path),
                          "seed": seed})


def from_datasets(train, test, *, val_size: int = 5000, seed: int = 0) -> TaskData:
    """TaskData from a pair of torch Datasets yielding (image_tensor, label) (compress(model, (train, test)));
    validation is a seeded split of train."""
    def stack(ds, what):
        try:
            items = [ds[i] for i in range(len(ds))]
        except Exception as e:  # noqa: BLE001
            raise UserError(f"data: the {what} dataset cannot be read ({type(e).__name__}: {e})") from None
        if not items:
            raise UserError(f"data: the {what} dataset is empty")
        bad = next((i for i, it in enumerate(items) if not (isinstance(it, (tuple, list)) and len(it) == 2
                                                             and isinstance(it[0], torch.Tensor) and it[0].dim() == 3)), None)
        if bad is not None:
            raise UserError(f"data: item {bad} of the {what} dataset is not (image tensor C x H x W, label)")
        shapes = {tuple(it[0].shape) for it in items}
        if len(shapes) != 1:
            raise UserError(f"data: the {what} dataset's images differ in shape ({sorted(shapes)[:3]}); resize them")
        return torch.stack([it[0].float() for it in items]), torch.tensor([int(it[1]) for it in items])

    x, y = stack(train, "train")
    xt, yt = stack(test, "test")
    if x.shape[1:] != xt.shape[1:]:
        raise UserError(f"data: train images are {list(x.shape[1:])} but test images {list(xt.shape[1:])}")
    nv = min(val_size, len(y) // 5)
    if nv < 1:
        raise UserError(f"data: the train dataset holds {len(y)} items; at least 5 are needed")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    va, tr = perm[:nv], perm[nv:]
    classes = int(max(int(y.max()), int(yt.max())) + 1)
    return TaskData(name="datasets", task="classification", train=Split(x[tr], y[tr]), val=Split(x[va], y[va]),
                    test=Split(xt, yt), in_channels=int(x.shape[1]), input_size=(int(x.shape[2]), int(x.shape[3])),
                    num_classes=classes, info={"seed": seed})
