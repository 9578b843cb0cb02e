"""CamVid road scenes (SegNet version): 11 classes, label 11 = void, ignored by the loss and by mIoU.

Reads `camvid-240x180.zip` in place (built by shared/data/build-datasets), a folder that holds it, or a
folder tree `[camvid/]{train,val,test}/*.png` with `{train,val,test}annot/*.png`. Images and labels are
paired by file name; a file without its partner, a label of another size, or a label value above 11 is
a `UserError` naming the file, because a silently misaligned segmentation set trains garbage.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import Split, TaskData
from .imagefolder import (Tree, channel_stats, decode_image, default_data_dir, is_image_name, normalized_tensor,
                          ZipTree, open_tree)

ARCHIVE = "camvid-240x180.zip"
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
           "pedestrian", "bicyclist")
IGNORE = 11
SPLITS = ("train", "val", "test")


def hflip_pair(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample's image and label map together, left-right, with probability 1/2."""
    flips = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    y = torch.where(flips[:, None, None], y.flip(-1), y)
    return x, y


def _find(root: Path) -> Tree:
    if root.is_file():
        tree = open_tree(root)
        for prefix in ("camvid", ""):
            if tree.is_dir(f"{prefix}/train".lstrip("/")):
                return tree.at(prefix) if isinstance(tree, ZipTree) else tree
        raise UserError(f"{root}: archive has no camvid/train/ folder; rebuild it with shared/data/build-datasets")
    if root.is_dir():
        for cand in (root, root / "camvid"):
            if (cand / "train").is_dir() and (cand / "trainannot").is_dir():
                return open_tree(cand)
        if (root / ARCHIVE).is_file():
            return _find(root / ARCHIVE)
    raise UserError(f"no CamVid at {root} (looked for {ARCHIVE} and camvid/{{train,val,test}}[annot]/ folders); "
                    "build it with shared/data/build-datasets (see shared/data/README.md) or set CHAINCOMP_DATA")


def _pairs(tree: Tree, split: str) -> list[str]:
    for sub in (split, f"{split}annot"):
        if not tree.is_dir(sub):
            raise UserError(f"{tree.where(sub)}: folder not found; CamVid needs {split}/ and {split}annot/")
    imgs = [n for n in tree.listdir(split)[1] if is_image_name(n)]
    labs = [n for n in tree.listdir(f"{split}annot")[1] if is_image_name(n)]
    if not imgs:
        raise UserError(f"{tree.where(split)}: no images")
    si, sl = set(imgs), set(labs)
    for n in imgs:
        if n not in sl:
            raise UserError(f"{tree.where(f'{split}/{n}')}: no label {split}annot/{n} "
                            f"({len(imgs)} images, {len(labs)} labels)")
    for n in labs:
        if n not in si:
            raise UserError(f"{tree.where(f'{split}annot/{n}')}: label without an image {split}/{n} "
                            f"({len(imgs)} images, {len(labs)} labels)")
    return imgs


def _label(tree: Tree, rel: str, hw: tuple[int, int], size: tuple[int, int] | None) -> np.ndarray:
    where = tree.where(rel)
    try:
        with Image.open(io.BytesIO(tree.read(rel))) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"{where}: label image has mode {im.mode}; expected one channel of class ids")
            if im.size != (hw[1], hw[0]):
                raise UserError(f"{where}: label is {im.size[1]}x{im.size[0]}, its image {hw[0]}x{hw[1]} (HxW)")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.NEAREST)
            lab = np.asarray(im).astype(np.int64)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where}: not a readable label image ({type(e).__name__}: {e})") from None
    if lab.size and (lab.max() > IGNORE or lab.min() < 0):
        raise UserError(f"{where}: label value {int(lab.max())} outside 0..{IGNORE} "
                        f"(class ids 0..10, {IGNORE} = void)")
    return lab


def _read_split(tree: Tree, split: str, limit: int | None, size: tuple[int, int] | None,
                ref: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    names = _pairs(tree, split)
    if limit is not None and limit < len(names):  # evenly spaced: the files are video frames in order
        names = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, max(1, limit)).round().astype(int))]
    xs, ys = [], []
    for n in names:
        raw = decode_image(tree.read(f"{split}/{n}"), tree.where(f"{split}/{n}"))
        hw = raw.shape[:2]
        if size is not None and hw != tuple(size):
            raw = np.asarray(Image.fromarray(raw).resize((size[1], size[0]), Image.BILINEAR))
        elif size is None:
            ref = ref or hw
            if hw != ref:
                raise UserError(f"{tree.where(f'{split}/{n}')}: image is {hw[0]}x{hw[1]}, the others "
                                f"{ref[0]}x{ref[1]} (HxW); pass size=(H, W) to resize all")
        xs.append(raw)
        ys.append(_label(tree, f"{split}annot/{n}", hw, size))
    return np.stack(xs), np.stack(ys)


def load_camvid(path: str | Path | None = None, *, limit: int | None = None,
                size: tuple[int, int] | None = None) -> TaskData:
    """CamVid as normalised float32 NCHW images and int64 (N, H, W) label maps.

    `limit` keeps that many evenly spaced frames of each split (quick runs); `size` = (H, W) resizes
    images bilinearly and labels nearest-neighbour. mean/std per channel come from train, in `info`.
    """
    t0 = time.perf_counter()
    tree = _find(Path(path).expanduser() if path is not None else default_data_dir())
    arrays = {}
    ref = None
    for split in SPLITS:
        arrays[split] = _read_split(tree, split, limit, size, ref)
        ref = arrays[split][0].shape[1:3]
    mean, std = channel_stats(arrays["train"][0])
    counts = np.bincount(arrays["train"][1].ravel(), minlength=IGNORE + 1)[:IGNORE]
    splits = {s: Split(normalized_tensor(x, mean, std), torch.from_numpy(y)) for s, (x, y) in arrays.items()}
    return TaskData(
        name="camvid", task="segmentation", train=splits["train"], val=splits["val"], test=splits["test"],
        in_channels=3, input_size=(int(ref[0]), int(ref[1])), num_classes=len(CLASSES), ignore_index=IGNORE,
        augment=hflip_pair,
        info={"classes": list(CLASSES), "mean": mean.tolist(), "std": std.tolist(), "source": tree.where(""),
              "class_frequency": (counts / max(1, counts.sum())).tolist(),
              "load_seconds": round(time.perf_counter() - t0, 3)},
    )
