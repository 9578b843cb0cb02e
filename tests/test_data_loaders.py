"""Loaders on tiny fake datasets built in tmp_path; real-archive checks skip when the archives are absent."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chaincomp.data.base import Split, TaskData
from chaincomp.data.camvid import load_camvid
from chaincomp.data.cifar import load_cifar10, random_crop_flip
from chaincomp.data.digits import load_digits_data
from chaincomp.data.imagefolder import default_data_dir, read_image_folder
from chaincomp.data.sr import hr_lr, load_sr, load_sr_sample
from chaincomp.errors import UserError

RNG = np.random.default_rng(0)


def _img(shape=(32, 32), mode="RGB") -> Image.Image:
    a = RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    return im if mode == "RGB" else im.convert(mode)


def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _cifar_tree(root: Path, classes=("cat", "dog", "frog"), n_train=6, n_test=2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                _save(_img(), root / split / c / f"{i:04d}.png")
    return root


def _zip_dir(src: Path, dst: Path, arc_prefix: str) -> Path:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f"{arc_prefix}/{f.relative_to(src).as_posix()}")
    return dst


# ---------------------------------------------------------------- CIFAR-10 and the image-folder reader

def test_cifar_image_tree(tmp_path):
    root = _cifar_tree(tmp_path / "c")
    d = load_cifar10(root, val_size=3, seed=0, download=False, cache_dir=tmp_path / "cache")
    assert isinstance(d, TaskData) and d.task == "classification" and d.num_classes == 3
    assert (len(d.train), len(d.val), len(d.test)) == (15, 3, 6)
    assert d.train.x.dtype == torch.float32 and d.train.x.shape[1:] == (3, 32, 32)
    assert d.train.y.dtype == torch.int64 and d.info["classes"] == ["cat", "dog", "frog"]
    assert d.train.x.mean((0, 2, 3)).abs().max() < 1e-4
    assert (d.train.x.std((0, 2, 3), correction=0) - 1).abs().max() < 1e-3
    again = load_cifar10(root, val_size=3, seed=0, download=False)
    assert torch.equal(again.val.x, d.val.x) and torch.equal(again.train.y, d.train.y)
    other = load_cifar10(root, val_size=3, seed=1, download=False)
    assert not torch.equal(other.val.x, d.val.x)
    assert not (tmp_path / "cache").exists()  # folder trees are not cached


def test_cifar_zip_is_cached(tmp_path):
    archive = _zip_dir(_cifar_tree(tmp_path / "c"), tmp_path / "cifar10-jpg.zip", "cifar10")
    cache = tmp_path / "cache"
    first = load_cifar10(tmp_path, val_size=2, cache_dir=cache, download=False)  # folder holding the archive
    assert first.info["source"] == str(archive) and not first.info["from_cache"]
    assert len(list(cache.glob("*.npz"))) == 1
    second = load_cifar10(archive, val_size=2, cache_dir=cache, download=False)
    assert second.info["from_cache"]
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    small = load_cifar10(archive, val_size=2, limit_train=4, limit_test=3, cache_dir=cache, download=False)
    assert (len(small.train), len(small.val), len(small.test)) == (4, 2, 3)
    (cache / next(cache.iterdir()).name).write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable cache"):
        third = load_cifar10(archive, val_size=2, cache_dir=cache, download=False)
    assert torch.equal(third.val.x, first.val.x)


def _binary_tgz(path: Path) -> dict:
    """A fake official binary tarball: 2 records per batch file (1 label byte + R, G, B planes of 32x32)."""
    recs, pixels = {}, {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        labels = np.array([i % 10, (i + 3) % 10], dtype=np.uint8)
        img = RNG.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
        recs[name] = np.concatenate([labels[:, None], img.reshape(2, -1)], 1).tobytes()
        pixels[name] = (labels, img)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in recs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return pixels


def test_cifar_binary_tarball(tmp_path):
    """Parsed with numpy, never pickle; pixels come back exactly after undoing the normalisation."""
    pixels = _binary_tgz(tmp_path / "cifar-10-binary.tar.gz")
    d = load_cifar10(tmp_path, val_size=0, cache_dir=tmp_path / "cache", download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (10, 0, 2)
    mean, std = torch.tensor(d.info["mean"]).view(3, 1, 1), torch.tensor(d.info["std"]).view(3, 1, 1)
    labels, img = pixels["test_batch.bin"]
    assert d.test.y.tolist() == labels.tolist()
    raw = torch.round((d.test.x * std + mean) * 255)
    assert torch.equal(raw.to(torch.uint8), torch.from_numpy(img))
    assert d.info["classes"][0] == "airplane"


def test_cifar_download_is_checked(tmp_path, monkeypatch):
    """No network in tests: urlopen is replaced; the MD5 check and the atomic placement are real."""
    import hashlib

    import chaincomp.data.cifar as cifar

    _binary_tgz(tmp_path / "src.tgz")
    payload = (tmp_path / "src.tgz").read_bytes()
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    with pytest.raises(UserError, match="MD5"):
        load_cifar10(tmp_path / "dl", download=True, val_size=0)
    assert not list((tmp_path / "dl").iterdir())  # no half file left behind
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(payload).hexdigest())
    d = load_cifar10(tmp_path / "dl", download=True, val_size=0, cache_dir=tmp_path / "cache")
    assert (tmp_path / "dl" / "cifar-10-binary.tar.gz").is_file() and len(d.train) == 10


def test_cifar_missing_offline_names_path(tmp_path):
    with pytest.raises(UserError) as e:
        load_cifar10(tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "build-datasets" in msg and "\n" not in msg


def test_crop_flip_is_deterministic_and_correct():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = torch.tensor([0, 1])
    a, ya = random_crop_flip(x, y, torch.Generator().manual_seed(3))
    b, _ = random_crop_flip(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and torch.equal(ya, y)
    flipped, _ = random_crop_flip(x, y, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    shifted, _ = random_crop_flip(x, y, torch.Generator().manual_seed(1), pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(shifted[i], padded[i, :, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _cifar_tree(tmp_path / "c", n_train=3, n_test=1)
    bad = root / "train" / "dog" / "0001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="0001.png"):
        load_cifar10(root, val_size=1, download=False)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        d = load_cifar10(root, val_size=1, download=False, skip_bad=True)
    assert len(d.train) + len(d.val) == 8


def test_empty_class_folder_is_named(tmp_path):
    root = _cifar_tree(tmp_path / "c", n_train=2, n_test=1)
    (root / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        read_image_folder(root, "train")


def test_other_modes_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        _save(_img(mode=mode), tmp_path / "train" / mode / "a.png")
    f = read_image_folder(tmp_path, "train")
    assert f.images.shape == (3, 32, 32, 3) and f.classes == ["L", "P", "RGBA"]
    grey = f.images[0]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_wrong_size_is_named_unless_resized(tmp_path):
    _save(_img((32, 32)), tmp_path / "train" / "a" / "0.png")
    _save(_img((20, 24)), tmp_path / "train" / "a" / "1.png")
    with pytest.raises(UserError, match="1.png"):
        read_image_folder(tmp_path, "train")
    f = read_image_folder(tmp_path, "train", size=(32, 32), resize=True)
    assert f.images.shape == (2, 32, 32, 3)


# ---------------------------------------------------------------- CamVid

def _camvid_zip(tmp_path: Path, *, hw=(12, 16), n=(4, 2, 3), label_max=11, drop_label=False) -> Path:
    root = tmp_path / "cv"
    for split, k in zip(("train", "val", "test"), n):
        for i in range(k):
            _save(_img(hw), root / split / f"f{i:03d}.png")
            lab = RNG.integers(0, label_max + 1, hw, dtype=np.uint8)
            if not (drop_label and split == "val" and i == 1):
                _save(Image.fromarray(lab, "L"), root / f"{split}annot" / f"f{i:03d}.png")
    return _zip_dir(root, tmp_path / "camvid-240x180.zip", "camvid")


def test_camvid_fake_zip(tmp_path):
    d = load_camvid(_camvid_zip(tmp_path))
    assert d.task == "segmentation" and d.num_classes == 11 and d.ignore_index == 11
    assert d.train.x.shape == (4, 3, 12, 16) and d.train.y.shape == (4, 12, 16)
    assert d.train.y.dtype == torch.int64 and int(d.train.y.max()) <= 11
    assert (len(d.val), len(d.test)) == (2, 3) and d.input_size == (12, 16)
    x, y = d.augment(d.train.x, d.train.y, torch.Generator().manual_seed(0))
    for i in range(4):
        same = torch.equal(x[i], d.train.x[i]) and torch.equal(y[i], d.train.y[i])
        flip = torch.equal(x[i], d.train.x[i].flip(-1)) and torch.equal(y[i], d.train.y[i].flip(-1))
        assert same or flip
    small = load_camvid(tmp_path, limit=2, size=(6, 8))
    assert small.train.x.shape == (2, 3, 6, 8) and small.test.y.shape == (2, 6, 8)


def test_camvid_missing_label_is_named(tmp_path):
    with pytest.raises(UserError, match="val/f001.png"):
        load_camvid(_camvid_zip(tmp_path, drop_label=True))


def test_camvid_label_out_of_range(tmp_path):
    with pytest.raises(UserError, match="label value"):
        load_camvid(_camvid_zip(tmp_path, label_max=40))


# ---------------------------------------------------------------- super-resolution

def _sr_tree(root: Path) -> Path:
    for s, k in (("set5", 2), ("set14", 2), ("bsd68", 2), ("sunhays80", 2)):
        for i in range(k):
            _save(_img((31 + i, 29 + 2 * i)), root / "sr" / s / f"im{i}.png")
    return root


def test_sr_pairs_are_bicubic_and_aligned(tmp_path):
    root = _sr_tree(tmp_path)
    d = load_sr(root, scale=2, patch=6, patches_per_image=3, val_images=1, seed=0)
    assert len(load_sr(root, scale=2, patch=6, patches_per_image=3, val_images=1, limit=1).train) == 3
    assert d.task == "super_resolution" and d.scale == 2 and d.input_size == (6, 6)
    assert d.train.x.shape == (9, 3, 6, 6) and d.train.y.shape == (9, 3, 12, 12) and len(d.val) == 3
    assert 0 <= float(d.train.x.min()) and float(d.train.y.max()) <= 1
    set5 = d.info["test_sets"]["set5"]
    assert not set5.stacked and len(set5) == 2 and set(d.info["test_sets"]) == {"set5", "set14"}
    hr = np.asarray(Image.open(root / "sr" / "set5" / "im0.png"))[:30, :28]
    lr = np.asarray(Image.fromarray(hr).resize((14, 15), Image.BICUBIC))
    assert torch.equal(set5.y[0], torch.from_numpy(hr.copy()).permute(2, 0, 1).float() / 255)
    assert torch.equal(set5.x[0], torch.from_numpy(lr.copy()).permute(2, 0, 1).float() / 255)
    # every training pair is an aligned window of one image's (HR, LR)
    files = sorted((root / "sr" / "bsd68").glob("*.png")) + sorted((root / "sr" / "sunhays80").glob("*.png"))
    pool = [hr_lr(np.asarray(Image.open(p).convert("RGB")), 2) for p in files]
    for px, py in zip(d.train.x, d.train.y):
        assert any(torch.equal(py, H[:, 2 * a:2 * a + 12, 2 * b:2 * b + 12]) and torch.equal(px, L[:, a:a + 6, b:b + 6])
                   for H, L in pool for a in range(L.shape[1] - 5) for b in range(L.shape[2] - 5))
    x, y = d.augment(d.train.x, d.train.y, torch.Generator().manual_seed(0))
    assert x.shape == d.train.x.shape and y.shape == d.train.y.shape
    with pytest.raises(UserError, match="scale"):
        load_sr(root, scale=1)


def test_sr_sample_offline():
    d = load_sr_sample(scale=3, patch=8, patches_per_image=4)
    assert d.train.x.shape == (8, 3, 8, 8) and d.train.y.shape == (8, 3, 24, 24)
    assert [tuple(t.shape) for t in d.test.y] == [(3, 426, 159)] * 2  # columns 480..639, cropped to x3
    assert [tuple(t.shape) for t in d.val.x] == [(3, 142, 26)] * 2
    assert d.info["test_sets"]["sample"] is d.test


def test_missing_archives_name_the_path(tmp_path):
    for fn in (load_camvid, load_sr):
        with pytest.raises(UserError, match=str(tmp_path)):
            fn(tmp_path)


# ---------------------------------------------------------------- digits

def test_digits_split_is_stratified_and_seeded():
    d = load_digits_data(seed=0)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.num_classes == 10 and d.augment is None
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert abs(len(d.test) - 0.2 * 1797) <= 1 and abs(len(d.val) - 0.15 * 1797) <= 1
    counts = torch.bincount(d.test.y, minlength=10)
    assert counts.min() >= 33 and counts.max() <= 38
    assert abs(float(d.train.x.mean())) < 1e-4
    again = load_digits_data(seed=0)
    assert torch.equal(again.test.x, d.test.x)
    assert not torch.equal(load_digits_data(seed=1).test.y, d.test.y)
    small = load_digits_data(limit_train=300, limit_test=120)
    assert (len(small.train), len(small.test)) == (300, 120) and torch.equal(small.val.y, d.val.y)
    aug = load_digits_data(augment=True).augment
    x, _ = aug(d.train.x[:4], d.train.y[:4], torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8)


# ---------------------------------------------------------------- real archives (absent in CI)

def _real(name: str) -> Path:
    p = default_data_dir() / name
    if not p.is_file():
        pytest.skip(f"{p} not built (see shared/data/README.md); real-archive check skipped")
    return p


def test_real_cifar10():
    p = _real("cifar10-jpg.zip")
    d = load_cifar10(p, val_size=200, limit_train=300, limit_test=200, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (300, 200, 200)
    assert d.info["classes"][:2] == ["airplane", "automobile"] and d.train.x.shape[1:] == (3, 32, 32)


def test_real_camvid():
    d = load_camvid(_real("camvid-240x180.zip"), limit=3)
    assert d.train.x.shape == (3, 3, 180, 240) and int(d.train.y.max()) <= 11


def test_real_sr():
    d = load_sr(_real("sr-images.zip"), scale=3, patches_per_image=2, val_images=1, limit=3)
    assert len(d.train) == 6 and len(d.val) == 2 and [len(s) for s in d.info["test_sets"].values()] == [5, 14]
    assert all(isinstance(s, Split) for s in d.info["test_sets"].values())
