"""CIFAR-10, read from whatever the user has, never through pickle.

Sources, tried in this order at `path` (default: $CHAINCOMP_DATA, else ~/.cache/chaincomp/data):
1. an image-folder tree `train/<class>/*` + `test/<class>/*` (also one level down in `cifar10/`);
2. `cifar10-jpg.zip`, the stored archive built by shared/data/build-datasets (read in place);
3. the official binary tarball `cifar-10-binary.tar.gz` (or its extracted `cifar-10-batches-bin/`):
   raw bytes parsed with numpy. The official *python* version is a pickle, which can run code: never used.
If none is there and downloads are allowed ($CHAINCOMP_DOWNLOAD not 0), the binary tarball is
downloaded into the folder and checked against its published MD5; otherwise a one-line `UserError`.

Decoding 60,000 JPEGs takes seconds, so the decoded uint8 arrays of an archive are cached in
$CHAINCOMP_CACHE (default ~/.cache/chaincomp/cache) under a name keyed by the archive's name, size
and mtime, written atomically (a crash leaves no half file); a damaged cache is ignored and rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..io import atomic_write_bytes
from .base import Split, TaskData
from .imagefolder import DirTree, Tree, ZipTree, channel_stats, decode_images, default_cache_dir, \
    default_data_dir, list_image_folder, normalized_tensor

ARCHIVE = "cifar10-jpg.zip"
BINARY = "cifar-10-binary.tar.gz"
BINARY_DIR = "cifar-10-batches-bin"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CACHE_VERSION = 1
_KEYS = ("train_x", "train_y", "train_ok", "train_files", "test_x", "test_y", "test_ok", "test_files", "classes")


def random_crop_flip(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, *, pad: int = 4,
                     flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random crop of the zero-padded batch (zero = channel mean after normalisation) and
    random horizontal flip, as one gather; all randomness comes from `generator`, so it replays."""
    n, c, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    out = xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
             rows.to(dev, non_blocking=True)[:, None, :, None],
             cols.to(dev, non_blocking=True)[:, None, None, :]]
    return out, y


def _locate(root: Path) -> tuple[str, Path] | None:
    if root.is_file():
        name = root.name.lower()
        if name.endswith(".zip"):
            return "zip", root
        if name.endswith((".tar.gz", ".tgz")):
            return "binary", root
        raise UserError(f"{root}: not a CIFAR-10 source; give {ARCHIVE}, {BINARY}, "
                        "or a folder with train/ and test/ class folders")
    if root.is_dir():
        for cand in (root, root / "cifar10"):
            if (cand / "train").is_dir() and (cand / "test").is_dir():
                return "tree", cand
        if (root / ARCHIVE).is_file():
            return "zip", root / ARCHIVE
        if (root / BINARY).is_file():
            return "binary", root / BINARY
        for cand in (root / BINARY_DIR, root):
            if (cand / "test_batch.bin").is_file():
                return "bindir", cand
    return None


def _want_download(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("CHAINCOMP_DOWNLOAD", "1").strip().lower() not in ("0", "false", "no", "off")


def _download(root: Path, allowed: bool) -> Path:
    folder = root.parent if root.suffix else root
    how = (f"no CIFAR-10 at {root} (looked for train/ and test/ class folders, {ARCHIVE}, {BINARY}, "
           f"{BINARY_DIR}/)")
    fix = (f"build {ARCHIVE} with shared/data/build-datasets (see shared/data/README.md) or put it "
           "in a folder named by CHAINCOMP_DATA")
    if not allowed:
        raise UserError(f"{how} and downloading is off; {fix}")
    target = folder / BINARY
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{BINARY}.", suffix=".tmp", dir=folder)
        md5 = hashlib.md5()
        with urllib.request.urlopen(URL, timeout=30) as r, os.fdopen(fd, "wb") as f:
            while chunk := r.read(1 << 20):
                md5.update(chunk)
                f.write(chunk)
        if md5.hexdigest() != MD5:
            raise UserError(f"{URL}: download is damaged (MD5 {md5.hexdigest()} != {MD5}); try again")
        os.replace(tmp, target)
        tmp = None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise UserError(f"{how} and the download from {URL} failed ({e}); {fix}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _read_binary(kind: str, path: Path) -> dict[str, np.ndarray]:
    """Parse the fixed-length records: 1 label byte, then 1024 R, 1024 G, 1024 B bytes (32x32, row-major)."""
    wanted = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    blobs: dict[str, bytes] = {}
    try:
        if kind == "binary":
            with tarfile.open(path, "r:gz") as tf:  # members are read into memory, nothing is extracted
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in wanted:
                        blobs[base] = tf.extractfile(m).read()
        else:
            blobs = {w: (path / w).read_bytes() for w in wanted if (path / w).is_file()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable CIFAR-10 binary archive ({e}); delete it and download again") from None
    missing = [w for w in wanted if w not in blobs]
    if missing:
        raise UserError(f"{path}: CIFAR-10 binary files missing: {', '.join(missing)}")

    def parse(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        recs = []
        for n in names:
            a = np.frombuffer(blobs[n], dtype=np.uint8)
            if a.size == 0 or a.size % 3073:
                raise UserError(f"{path}:{n}: size {a.size} is not a whole number of 3073-byte records")
            recs.append(a.reshape(-1, 3073))
        r = np.concatenate(recs)
        if r[:, 0].max() > 9:
            raise UserError(f"{path}: label {r[:, 0].max()} out of range 0..9; the file is damaged")
        return np.ascontiguousarray(r[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), r[:, 0].astype(np.int64)

    tx, ty = parse(wanted[:5])
    sx, sy = parse(wanted[5:])
    none = np.asarray([], dtype=str)
    return {"train_x": tx, "train_y": ty, "train_ok": np.ones(len(ty), bool), "train_files": none,
            "test_x": sx, "test_y": sy, "test_ok": np.ones(len(sy), bool), "test_files": none,
            "classes": np.asarray(CLASSES)}


def _cache_path(src: Path, cache_dir: Path | None) -> Path:
    st = src.stat()
    return Path(cache_dir or default_cache_dir()) / f"{src.name}-{st.st_size}-{st.st_mtime_ns}-v{_CACHE_VERSION}.npz"


def _cache_load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in _KEYS}
        for split in ("train", "test"):
            if not len(a[f"{split}_x"]) == len(a[f"{split}_y"]) == len(a[f"{split}_ok"]):
                raise ValueError("inconsistent lengths")
        return a
    except Exception as e:  # truncated, damaged or foreign file: rebuild it
        warnings.warn(f"{path}: unreadable cache ({type(e).__name__}); decoding the archive again", stacklevel=3)
        return None


def _cache_save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        warnings.warn(f"{path}: could not write the decode cache ({e}); next load decodes again", stacklevel=3)


def _tree_of(kind: str, path: Path) -> Tree:
    if kind == "tree":
        return DirTree(path)
    z = ZipTree(path)
    for prefix in ("cifar10", ""):
        if z.is_dir(f"{prefix}/train".lstrip("/")) and z.is_dir(f"{prefix}/test".lstrip("/")):
            return z.at(prefix)
    raise UserError(f"{path}: archive has no train/ and test/ folders (also looked in cifar10/)")


def _listing(tree: Tree) -> dict[str, np.ndarray]:
    tr = list_image_folder(tree, "train")
    te = list_image_folder(tree, "test", tr.classes)
    return {"train_y": tr.labels, "test_y": te.labels, "classes": np.asarray(tr.classes),
            "train_files": np.asarray(tr.files), "test_files": np.asarray(te.files)}


def _decode_into(arrays: dict[str, np.ndarray], tree: Tree, split: str, idx: np.ndarray, skip_bad: bool,
                 size: tuple[int, int] | None) -> None:
    """Decode the images `idx` of a split into full-length arrays (untouched rows cost no memory)."""
    x, ok = decode_images(tree, [str(f) for f in arrays[f"{split}_files"][idx]], size=size, skip_bad=skip_bad)
    n = len(arrays[f"{split}_y"])
    arrays[f"{split}_x"] = np.zeros((n, *x.shape[1:]), dtype=np.uint8)
    arrays[f"{split}_ok"] = np.zeros(n, dtype=bool)
    arrays[f"{split}_x"][idx] = x
    arrays[f"{split}_ok"][idx] = ok


def load_cifar10(path: str | Path | None = None, *, val_size: int = 5000, seed: int = 0,
                 limit_train: int | None = None, limit_test: int | None = None, download: bool | None = None,
                 cache_dir: str | Path | None = None, skip_bad: bool = False) -> TaskData:
    """CIFAR-10 as normalised float32 NCHW tensors (see the module docstring for sources and the cache).

    val: `val_size` images carved at random (numpy, `seed`) from the 50,000 training images; train: the
    rest in that shuffled order, the first `limit_train` of them when given; test: all, or `limit_test`
    drawn with `seed`. mean/std per channel come from the train split used and are in `info`.
    With limits and no cache yet, only the needed images are decoded (and nothing is cached).
    `skip_bad` skips unreadable images with a warning instead of failing. `download`: None = allowed
    unless $CHAINCOMP_DOWNLOAD is 0.
    """
    t0 = time.perf_counter()
    for name, v in (("limit_train", limit_train), ("limit_test", limit_test)):
        if v is not None and v < 1:
            raise UserError(f"{name}: {v} must be at least 1 (or left out for all images)")
    root = Path(path).expanduser() if path is not None else default_data_dir()
    found = _locate(root) or ("binary", _download(root, _want_download(download)))
    kind, src = found
    cpath = _cache_path(src, cache_dir) if kind in ("zip", "binary") else None
    arrays = _cache_load(cpath) if cpath else None
    cached = arrays is not None
    tree = None
    if arrays is None:
        if kind in ("binary", "bindir"):
            arrays = _read_binary(kind, src)
            if cpath:
                _cache_save(cpath, arrays)
        else:
            tree = _tree_of(kind, src)
            arrays = _listing(tree)
    n_train, n_test = len(arrays["train_y"]), len(arrays["test_y"])
    if not 0 <= val_size < n_train:
        raise UserError(f"val_size: {val_size} must be between 0 and {n_train - 1} (training images at {src})")
    perm = np.random.default_rng(seed).permutation(n_train)
    va_idx, tr_idx = perm[:val_size], perm[val_size:]
    if limit_train is not None:
        tr_idx = tr_idx[:limit_train]
    te_idx = np.arange(n_test)
    if limit_test is not None and limit_test < n_test:
        te_idx = np.sort(np.random.default_rng(seed + 1).permutation(n_test)[:limit_test])
    need = np.concatenate([va_idx, tr_idx])

    if "train_x" not in arrays:  # an image tree, or an archive seen for the first time
        whole = kind == "zip" and limit_train is None and limit_test is None
        _decode_into(arrays, tree, "train", np.arange(n_train) if whole else need, skip_bad, None)
        _decode_into(arrays, tree, "test", te_idx, skip_bad, arrays["train_x"].shape[1:3])
        if whole:
            _cache_save(cpath, arrays)
    for split, idx in (("train", need), ("test", te_idx)):
        ok = arrays[f"{split}_ok"][idx]
        if not ok.all() and not skip_bad:
            first = arrays[f"{split}_files"][idx[int(np.argmin(ok))]]
            raise UserError(f"{src}:{first}: not a readable image (remembered in the decode cache {cpath}); "
                            "replace it or pass skip_bad=True")

    ok = arrays["train_ok"][need]
    x, y = arrays["train_x"][need[ok]], arrays["train_y"][need[ok]]
    nv = int(ok[:len(va_idx)].sum())
    mean, std = channel_stats(x[nv:])
    te_idx = te_idx[arrays["test_ok"][te_idx]]
    classes = [str(c) for c in arrays["classes"]]
    data = TaskData(
        name="cifar10", task="classification",
        train=Split(normalized_tensor(x[nv:], mean, std), torch.from_numpy(y[nv:])),
        val=Split(normalized_tensor(x[:nv], mean, std), torch.from_numpy(y[:nv])),
        test=Split(normalized_tensor(arrays["test_x"][te_idx], mean, std), torch.from_numpy(arrays["test_y"][te_idx])),
        in_channels=3, input_size=(int(x.shape[1]), int(x.shape[2])), num_classes=len(classes),
        augment=partial(random_crop_flip, pad=4, flip=True),
        info={"classes": classes, "mean": mean.tolist(), "std": std.tolist(), "source": str(src),
              "source_kind": kind, "from_cache": cached, "seed": seed},
    )
    data.info["load_seconds"] = round(time.perf_counter() - t0, 3)
    return data
