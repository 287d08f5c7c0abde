"""ImageNet-style folders: ``root/train/<class>/*`` and ``root/val/<class>/*`` read by torchvision's ImageFolder.

Before any training the tree is validated: both splits exist, hold the same non-empty set of class folders, and
every image file's header decodes (PIL ``Image.open`` + ``verify``, checked by a thread pool because it is I/O
bound). Undecodable files either stop the build (``on_bad_image='fail'``, a :class:`DataError` naming them) or
are dropped and counted (``'skip'``). Transforms are timm's: train RandomResizedCrop (scale 0.08-1) + flip
[+ RandAugment rand-m9-mstd0.5] [+ random erasing], eval resize to img_size / 0.875 + centre crop, bicubic.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .core import DataError

SPLITS = ("train", "val")
CROP_PCT = 0.875


@dataclass
class FolderScan:
    classes: list[str]
    files: dict[str, list[str]]  # split -> every image file (normalised path)
    bad: dict[str, str]  # normalised path -> why it does not decode


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _image_files(class_dir: str) -> list[str]:
    out = []
    for root, _, names in sorted(os.walk(class_dir, followlinks=True)):
        out += [os.path.normpath(os.path.join(root, n)) for n in sorted(names)
                if has_file_allowed_extension(n, IMG_EXTENSIONS)]
    return out


def _header_error(path: str) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        return f"{type(err).__name__}: {err}"
    return None


def scan_imagefolder(root: str | Path, workers: int = 8) -> FolderScan:
    """Validate the folder tree and check every image header; raises :class:`DataError` for a broken tree."""
    root = Path(root)
    dirs = {s: root / s for s in SPLITS}
    for d in dirs.values():
        if not d.is_dir():
            raise DataError(f"{d}: missing; imagefolder needs {root}/train/<class>/* and {root}/val/<class>/*")
    classes = {s: _class_dirs(d) for s, d in dirs.items()}
    if not classes["train"]:
        raise DataError(f"{dirs['train']}: no class folders; put each class's images in train/<class>/")
    if classes["train"] != classes["val"]:
        only_t = sorted(set(classes["train"]) - set(classes["val"]))
        only_v = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataError(f"{root}: train and val have different class folders (only in train: {only_t[:10]}, "
                        f"only in val: {only_v[:10]}); both splits need the same classes")
    files: dict[str, list[str]] = {}
    for split, d in dirs.items():
        files[split] = []
        for c in classes[split]:
            found = _image_files(str(d / c))
            if not found:
                raise DataError(f"{d / c}: class folder has no image files ({', '.join(IMG_EXTENSIONS)}); "
                                "add images or remove the folder from both splits")
            files[split] += found
    every = files["train"] + files["val"]
    with ThreadPoolExecutor(workers) as pool:
        errors = list(pool.map(_header_error, every, chunksize=64))
    bad = {p: e for p, e in zip(every, errors, strict=True) if e is not None}
    return FolderScan(classes["train"], files, bad)


def open_image(path: str, mode: str) -> Image.Image:
    """ImageFolder's loader: decode and convert, naming the file when the pixel data is broken."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)
    except Exception as err:
        raise DataError(f"{path}: cannot decode ({type(err).__name__}: {err}); its header passed the check at "
                        "build time but the pixel data is broken: delete or replace the file") from err


def _keep(path: str, bad: frozenset[str]) -> bool:
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and os.path.normpath(path) not in bad


def imagefolder_transforms(img_size: int, augment: str, random_erasing: float, mean: tuple[float, ...],
                           std: tuple[float, ...]):
    """(train, eval) timm transforms; augment 'none' trains on the eval transform."""
    from timm.data import create_transform

    common = {"interpolation": "bicubic", "mean": tuple(mean), "std": tuple(std)}
    eval_tf = create_transform(img_size, is_training=False, crop_pct=CROP_PCT, **common)
    if augment == "none":
        return eval_tf, eval_tf
    train_tf = create_transform(img_size, is_training=True, hflip=0.5, color_jitter=None,
                                auto_augment="rand-m9-mstd0.5" if augment == "randaug" else None,
                                re_prob=random_erasing, re_mode="pixel", **common)
    return train_tf, eval_tf


def build_imagefolder(root: str | Path, scan: FolderScan, in_chans: int, train_tf, eval_tf
                      ) -> tuple[ImageFolder, ImageFolder]:
    """torchvision ImageFolders for both splits without the files in ``scan.bad``."""
    loader = functools.partial(open_image, mode="L" if in_chans == 1 else "RGB")
    keep = functools.partial(_keep, bad=frozenset(scan.bad))
    out = []
    for split, tf in zip(SPLITS, (train_tf, eval_tf), strict=True):
        ds = ImageFolder(str(Path(root) / split), transform=tf, loader=loader, is_valid_file=keep, allow_empty=True)
        present = set(ds.targets)
        for i, c in enumerate(ds.classes):
            if i not in present:  # every file of the class was skipped as undecodable
                raise DataError(f"{Path(root) / split / c}: no decodable image left after skipping bad files; "
                                "replace them")
        out.append(ds)
    return out[0], out[1]
