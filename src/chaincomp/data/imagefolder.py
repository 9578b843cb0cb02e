"""Read image files from a folder or straight out of a zip archive, with data faults that name the file.

Every loader reads through a `Tree` (a directory, or a folder inside a stored zip archive: the benchmark
archives are read in place, never extracted). The class-per-folder reader below is what CIFAR-10 uses:
class = sub-folder name, classes sorted, images directly inside each class folder.

Fault policy (a bad dataset must fail loudly, with the file to fix):
- an unreadable or corrupt image raises `UserError` naming it; with `skip_bad=True` it is skipped
  instead and one warning counts the skips (and names the first);
- an empty class folder (no image files) raises `UserError` naming the folder;
- an image in another mode (L, LA, P, RGBA, CMYK, I;16 ...) is converted with PIL's `convert("RGB")`
  (alpha is dropped, not composited; greyscale becomes R=G=B);
- an image of the wrong size raises `UserError` naming it, unless `resize=True` (bilinear resize).
Files whose names start with "." and files without an image extension are ignored.
"""
from __future__ import annotations

import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def default_data_dir() -> Path:
    """Where the benchmark archives live: $CHAINCOMP_DATA, else ~/.cache/chaincomp/data."""
    return Path(os.environ.get("CHAINCOMP_DATA") or Path.home() / ".cache" / "chaincomp" / "data").expanduser()


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: $CHAINCOMP_CACHE, else ~/.cache/chaincomp/cache."""
    return Path(os.environ.get("CHAINCOMP_CACHE") or Path.home() / ".cache" / "chaincomp" / "cache").expanduser()


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_mode(data: bytes, where: str) -> str:
    """'L' for a greyscale image (stays one channel), else 'RGB'."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return "L" if im.mode in GREY_MODES else "RGB"
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"{where}: not a readable image ({type(e).__name__}: {e})") from None


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTS)


class Tree:
    """Read-only files below a root; paths are relative, '/'-separated, '' is the root."""

    def listdir(self, sub: str = "") -> tuple[list[str], list[str]]:
        """Sorted names of the sub-folders and of the files directly inside `sub`."""
        raise NotImplementedError

    def is_dir(self, sub: str) -> bool:
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def where(self, rel: str) -> str:
        """How to name `rel` in an error message."""
        raise NotImplementedError


class DirTree(Tree):
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def listdir(self, sub: str = "") -> tuple[list[str], list[str]]:
        dirs, files = [], []
        with os.scandir(self.root / sub) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                (dirs if e.is_dir() else files).append(e.name)
        return sorted(dirs), sorted(files)

    def is_dir(self, sub: str) -> bool:
        return (self.root / sub).is_dir()

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def where(self, rel: str) -> str:
        return str(self.root / rel)


class ZipTree(Tree):
    """A folder inside a zip archive (members are read directly; stored archives need no inflating)."""

    def __init__(self, path: str | Path, prefix: str = ""):
        self.path = Path(path)
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{self.path}: not a readable zip archive ({e}); rebuild or re-download it") from None
        self._dirs: dict[str, set[str]] = {"": set()}
        self._files: dict[str, list[str]] = {}
        for name in self.zf.namelist():  # one pass; folders are few, so their chains are built once each
            parent, _, base = name.rstrip("/").rpartition("/")
            if name.endswith("/"):
                self._dirs.setdefault(name.rstrip("/"), set())
            elif base:
                self._files.setdefault(parent, []).append(base)
        for folder in list(self._files) + list(self._dirs):
            parts = [p for p in folder.split("/") if p]
            for i in range(len(parts)):
                self._dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
                self._dirs.setdefault("/".join(parts[:i + 1]), set())
        self.prefix = ""
        self.prefix = self._full(prefix)

    def at(self, prefix: str) -> "ZipTree":
        """The same archive seen from one of its folders (shares the open file and the index)."""
        view = object.__new__(ZipTree)
        view.__dict__.update(self.__dict__)
        view.prefix = self._full(prefix)
        return view

    def _full(self, sub: str) -> str:
        return "/".join(p for p in (self.prefix, sub.strip("/")) if p)

    def listdir(self, sub: str = "") -> tuple[list[str], list[str]]:
        full = self._full(sub)
        dirs = [d for d in self._dirs.get(full, ()) if not d.startswith(".")]
        files = [f for f in self._files.get(full, ()) if not f.startswith(".")]
        return sorted(dirs), sorted(files)

    def is_dir(self, sub: str) -> bool:
        return self._full(sub) in self._dirs

    def read(self, rel: str) -> bytes:
        try:
            return self.zf.read(self._full(rel))
        except (zipfile.BadZipFile, OSError, KeyError) as e:
            raise UserError(f"{self.where(rel)}: cannot read from the archive ({e})") from None

    def where(self, rel: str) -> str:
        return f"{self.path}:{self._full(rel)}"


def open_tree(path: str | Path, prefix: str = "") -> Tree:
    """A zip archive or a directory; for a zip, `prefix` is the folder inside it to treat as root."""
    path = Path(path)
    if path.is_file():
        return ZipTree(path, prefix)
    if path.is_dir():
        return DirTree(path / prefix if prefix else path)
    raise UserError(f"{path}: no such file or folder")


class BadImage(UserError):
    """A file that does not decode as an image."""


def decode_image(data: bytes, where: str, *, size: tuple[int, int] | None = None,
                 resize: bool = False, mode: str = "RGB") -> np.ndarray:
    """Bytes -> (H, W, C) uint8, C = 3 (mode RGB) or 1 (mode L, greyscale). `size` is (H, W); a
    mismatch is an error unless `resize`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != mode:
                im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                if not resize:
                    raise UserError(f"{where}: image is {im.size[1]}x{im.size[0]} (HxW), expected "
                                    f"{size[0]}x{size[1]}; fix the file or ask for resizing")
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
            return arr[..., None] if arr.ndim == 2 else arr
    except UserError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise BadImage(f"{where}: not a readable image ({type(e).__name__}: {e}); "
                       "replace the file or skip bad images") from None


@dataclass
class FolderListing:
    """The files of a class-per-folder tree, in order: sorted classes, sorted files within a class."""

    files: list[str]
    labels: np.ndarray  # int64, one per file
    classes: list[str]


def list_image_folder(tree: Tree, sub: str = "", classes: list[str] | None = None) -> FolderListing:
    """List `sub/<class>/<image>`; `classes` (e.g. those of train) must then match the folders exactly."""
    if not tree.is_dir(sub):
        raise UserError(f"{tree.where(sub)}: folder not found; expected <class>/<image> folders there")
    found, _ = tree.listdir(sub)
    if not found:
        raise UserError(f"{tree.where(sub)}: no class folders; expected <class>/<image> folders there")
    if classes is not None and list(classes) != found:
        raise UserError(f"{tree.where(sub)}: class folders {found} differ from {list(classes)}; "
                        "every split needs the same class folders")
    files, labels = [], []
    for k, cls in enumerate(found):
        folder = f"{sub}/{cls}" if sub else cls
        names = [n for n in tree.listdir(folder)[1] if is_image_name(n)]
        if not names:
            raise UserError(f"{tree.where(folder)}: class folder holds no images ({', '.join(IMAGE_EXTS)}); "
                            "add images or remove the folder")
        files += [f"{folder}/{n}" for n in names]
        labels += [k] * len(names)
    return FolderListing(files, np.asarray(labels, dtype=np.int64), found)


def decode_images(tree: Tree, files: list[str], *, size: tuple[int, int] | None = None, resize: bool = False,
                  skip_bad: bool = False, mode: str = "RGB") -> tuple[np.ndarray, np.ndarray]:
    """Decode files into one (N, H, W, C) uint8 array, plus a bool mask of those that decoded.

    Without `size`, the first readable image fixes it. Skipped images leave zeros and a False in the mask.
    """
    out: np.ndarray | None = None
    ok = np.zeros(len(files), dtype=bool)
    bad: list[str] = []
    for i, rel in enumerate(files):
        try:
            img = decode_image(tree.read(rel), tree.where(rel), size=size, resize=resize, mode=mode)
        except BadImage:
            if not skip_bad:
                raise
            bad.append(tree.where(rel))
            continue
        if out is None:
            size = size or img.shape[:2]
            out = np.zeros((len(files), size[0], size[1], img.shape[2]), dtype=np.uint8)
        out[i] = img
        ok[i] = True
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(files)} (first: {bad[0]})", stacklevel=2)
    if out is None:
        if files:
            raise UserError(f"{tree.where(files[0])}: none of the {len(files)} images could be read")
        out = np.zeros((0, *(size or (0, 0)), 1 if mode == "L" else 3), dtype=np.uint8)
    return out, ok


@dataclass
class ImageFolder:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    files: list[str]


def read_image_folder(path: str | Path | Tree, sub: str = "", *, size: tuple[int, int] | None = None,
                      resize: bool = False, skip_bad: bool = False,
                      classes: list[str] | None = None, mode: str = "RGB") -> ImageFolder:
    """Read a whole class-per-folder tree (see the module docstring for how faults are handled)."""
    tree = path if isinstance(path, Tree) else open_tree(path)
    listing = list_image_folder(tree, sub, classes)
    images, ok = decode_images(tree, listing.files, size=size, resize=resize, skip_bad=skip_bad, mode=mode)
    files = [f for f, k in zip(listing.files, ok) if k]
    return ImageFolder(images[ok], listing.labels[ok], listing.classes, files)


def channel_stats(u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std on [0, 1] of (N, H, W, C) uint8, from 256-bin histograms (fast, no copy)."""
    t = torch.from_numpy(np.ascontiguousarray(u8))
    v = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(t.shape[-1]):
        h = torch.bincount(t[..., c].reshape(-1), minlength=256).numpy().astype(np.float64)
        n = max(h.sum(), 1.0)
        m = (h * v).sum() / n
        mean.append(m / 255.0)
        std.append(np.sqrt(max((h * v * v).sum() / n - m * m, 1e-12)) / 255.0)
    return np.asarray(mean), np.asarray(std)


def normalized_tensor(u8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 (x/255 - mean)/std, without a float64 copy."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).contiguous().float()  # permute uint8: 4x less
    x.sub_(torch.tensor(mean * 255, dtype=torch.float32).view(1, -1, 1, 1))
    return x.div_(torch.tensor(std * 255, dtype=torch.float32).view(1, -1, 1, 1))
