"""Super-resolution pairs: x = low-resolution input, y = high-resolution target, RGB float32 in [0, 1].

The usual protocol: the HR image is cropped (bottom/right) to a multiple of `scale`, and the LR input
is its bicubic downscaling (PIL BICUBIC, which low-pass filters like MATLAB's imresize), rounded to
8 bits as a saved LR image would be. Training uses random aligned patch pairs; test images are whole,
so test splits hold lists of tensors (served one image per batch). Score with
`chaincomp.metrics.psnr_y(sr, hr, shave=scale)`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import Split, TaskData
from .imagefolder import Tree, ZipTree, decode_image, default_data_dir, is_image_name, open_tree

ARCHIVE = "sr-images.zip"
TRAIN_SETS = ("bsd68", "sunhays80")
TEST_SETS = ("set5", "set14")


def hr_lr(img: np.ndarray, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 -> (HR, LR) tensors (3, H', W') and (3, H'/s, W'/s) in [0, 1], H', W' multiples of s."""
    h, w = img.shape[0] // scale * scale, img.shape[1] // scale * scale
    hr = np.ascontiguousarray(img[:h, :w])
    lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)
    return t(hr), t(lr)


def random_patches(hr: torch.Tensor, lr: torch.Tensor, n: int, patch: int, scale: int, rng: np.random.Generator,
                   where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` aligned pairs: an LR patch `patch` x `patch` and the HR patch it came from."""
    lh, lw = lr.shape[1:]
    if lh < patch or lw < patch:
        raise UserError(f"{where}: image too small ({lh}x{lw} after x{scale} downscaling) for patch={patch}")
    i = rng.integers(0, lh - patch + 1, n)
    j = rng.integers(0, lw - patch + 1, n)
    p, s = patch, scale
    xs = torch.stack([lr[:, a:a + p, b:b + p] for a, b in zip(i, j)])
    ys = torch.stack([hr[:, a * s:(a + p) * s, b * s:(b + p) * s] for a, b in zip(i, j)])
    return xs, ys


def flip_rotate(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 dihedral variants (h-flip, v-flip, transpose), the same for each LR/HR pair; square patches."""
    n = x.shape[0]
    m = (torch.rand(n, 3, generator=generator) < 0.5).to(x.device)
    for k, dim in ((0, -1), (1, -2)):
        x = torch.where(m[:, k, None, None, None], x.flip(dim), x)
        y = torch.where(m[:, k, None, None, None], y.flip(dim), y)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(m[:, 2, None, None, None], x.transpose(-1, -2), x)
        y = torch.where(m[:, 2, None, None, None], y.transpose(-1, -2), y)
    return x, y


def _find(root: Path) -> Tree:
    if root.is_file():
        tree = open_tree(root)
        for prefix in ("sr", ""):
            if tree.is_dir(f"{prefix}/set5".lstrip("/")):
                return tree.at(prefix) if isinstance(tree, ZipTree) else tree
        raise UserError(f"{root}: archive has no sr/set5/ folder; rebuild it with shared/data/build-datasets")
    if root.is_dir():
        for cand in (root, root / "sr"):
            if all((cand / s).is_dir() for s in TRAIN_SETS + TEST_SETS):
                return open_tree(cand)
        if (root / ARCHIVE).is_file():
            return _find(root / ARCHIVE)
    raise UserError(f"no super-resolution images at {root} (looked for {ARCHIVE} and "
                    f"[sr/]{{{','.join(TEST_SETS + TRAIN_SETS)}}}/ folders); build {ARCHIVE} with "
                    "shared/data/build-datasets (see shared/data/README.md), or use load_sr_sample() offline")


def _images(tree: Tree, folder: str) -> list[str]:
    if not tree.is_dir(folder):
        raise UserError(f"{tree.where(folder)}: folder not found")
    names = [f"{folder}/{n}" for n in tree.listdir(folder)[1] if is_image_name(n)]
    if not names:
        raise UserError(f"{tree.where(folder)}: holds no images")
    return names


def _check(scale: int, patch: int, patches_per_image: int) -> None:
    if not (isinstance(scale, int) and 2 <= scale <= 8):
        raise UserError(f"scale: {scale!r} must be an integer from 2 to 8")
    if patch < 1 or patches_per_image < 1:
        raise UserError(f"patch ({patch}) and patches_per_image ({patches_per_image}) must be at least 1")


def load_sr(path: str | Path | None = None, *, scale: int = 2, patch: int = 24, patches_per_image: int = 16,
            val_images: int = 8, seed: int = 0, limit: int | None = None) -> TaskData:
    """Train on random patches of bsd68 + sunhays80, test on whole Set5 (`test`) and Set14.

    `patch` is the LR patch side (HR = patch * scale); `val_images` images of the training pool, drawn
    with `seed`, are held out and give the validation patches; `limit` keeps only that many of the
    other (training) images, for quick runs. `info['test_sets']` holds {'set5': Split, 'set14': Split},
    lists of whole LR inputs and HR targets.
    """
    _check(scale, patch, patches_per_image)
    t0 = time.perf_counter()
    tree = _find(Path(path).expanduser() if path is not None else default_data_dir())
    pool = [f for s in TRAIN_SETS for f in _images(tree, s)]
    if not 0 <= val_images < len(pool):
        raise UserError(f"val_images: {val_images} must be below the {len(pool)} training images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    splits = {}
    train_idx = order[val_images:] if limit is None else order[val_images:val_images + limit]
    for name, idx in (("val", order[:val_images]), ("train", train_idx)):
        xs, ys = [], []
        for i in sorted(idx):
            hr, lr = hr_lr(decode_image(tree.read(pool[i]), tree.where(pool[i])), scale)
            x, y = random_patches(hr, lr, patches_per_image, patch, scale, rng, tree.where(pool[i]))
            xs.append(x)
            ys.append(y)
        empty = (torch.zeros(0, 3, patch, patch), torch.zeros(0, 3, patch * scale, patch * scale))
        splits[name] = Split(torch.cat(xs) if xs else empty[0], torch.cat(ys) if ys else empty[1])
    test_sets = {}
    for s in TEST_SETS:
        pairs = [hr_lr(decode_image(tree.read(f), tree.where(f)), scale) for f in _images(tree, s)]
        test_sets[s] = Split([lr for _, lr in pairs], [hr for hr, _ in pairs])
    return TaskData(
        name="sr", task="super_resolution", train=splits["train"], val=splits["val"], test=test_sets["set5"],
        in_channels=3, input_size=(patch, patch), scale=scale, augment=flip_rotate,
        info={"test_sets": test_sets, "source": tree.where(""), "train_images": len(train_idx),
              "val_images": val_images, "seed": seed, "load_seconds": round(time.perf_counter() - t0, 3)},
    )


def load_sr_sample(scale: int = 2, *, patch: int = 24, patches_per_image: int = 64, seed: int = 0) -> TaskData:
    """Offline super-resolution from scikit-learn's two bundled photos (china, flower; 427x640).

    Each photo is cut into three vertical strips that never overlap: columns 0-399 give the training
    patches, 400-479 the validation image, 480-639 the test image. Each strip is downscaled on its
    own, so no held-out pixel leaks into a training input. Small: for smoke runs and CI, not for numbers
    to compare with the literature.
    """
    from sklearn.datasets import load_sample_images

    _check(scale, patch, patches_per_image)
    rng = np.random.default_rng(seed)
    data = load_sample_images()
    xs, ys, val, test = [], [], ([], []), ([], [])
    for img, fname in zip(data.images, data.filenames):
        hr, lr = hr_lr(img[:, :400], scale)
        x, y = random_patches(hr, lr, patches_per_image, patch, scale, rng, fname)
        xs.append(x)
        ys.append(y)
        for (lo, hi), dst in (((400, 480), val), ((480, 640), test)):
            hr, lr = hr_lr(img[:, lo:hi], scale)
            dst[0].append(lr)
            dst[1].append(hr)
    test_split = Split(*test)
    return TaskData(
        name="sr_sample", task="super_resolution", train=Split(torch.cat(xs), torch.cat(ys)), val=Split(*val),
        test=test_split, in_channels=3, input_size=(patch, patch), scale=scale, augment=flip_rotate,
        info={"test_sets": {"sample": test_split}, "source": "sklearn.datasets.load_sample_images", "seed": seed},
    )
