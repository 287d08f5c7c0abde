"""Locating and decoding the archive datasets: Fashion-MNIST (IDX files) and CIFAR-10/100 (python pickles).

Each loader returns :class:`RawSplits`: uint8 images (N, C, H, W) and int64 labels for the train and the
test split, with the class names. Everything the files promise is checked (shapes, counts, label range) and
every failure is a :class:`DataError` naming the file and how to fix it. Fashion-MNIST: 60,000 + 10,000 28x28
grey images, 10 classes (Xiao et al. 2017). CIFAR: 50,000 + 10,000 32x32 RGB images, 10 / 100 classes
(Krizhevsky 2009).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import DataError
from .idx import read_idx

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                "eval_images": "t10k-images-idx3-ubyte", "eval_labels": "t10k-labels-idx1-ubyte"}
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
CIFAR = {  # name -> (folder, train files, test file, meta file, label key, names key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                b"labels", b"label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names", 100),
}


def download_root() -> Path:
    """Where downloads go and where cifar is looked for when no data_dir is given."""
    return Path.home() / ".cache" / "mixerlab" / "data"


def download_allowed(flag: bool) -> bool:
    return flag or os.environ.get("MIXERLAB_DOWNLOAD", "").lower() in ("1", "true", "yes")


@dataclass
class RawSplits:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    classes: list[str]
    source: Path
    files: list[Path]


def _check_labels(labels: torch.Tensor, num_classes: int, path: Path) -> None:
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is outside [0, {num_classes}) "
                        f"({bad.numel()} such labels); the file is corrupt or belongs to another dataset")


def _fmnist_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for key, stem in FMNIST_FILES.items():
        for cand in (directory / f"{stem}.gz", directory / stem):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(stem)
    return found, missing


def load_fashion_mnist(data_dir: str | None, download: bool) -> RawSplits:
    """Read the four IDX files from ``data_dir`` (or its torchvision layout FashionMNIST/raw) or the default."""
    roots = [Path(data_dir)] if data_dir else [FMNIST_DIR, download_root()]
    candidates = [d for r in roots for d in (r, r / "FashionMNIST" / "raw")]
    best: tuple[dict[str, Path], list[str]] | None = None
    for d in candidates:
        found, missing = _fmnist_files(d)
        if not missing:
            return _read_fmnist(found, d)
        if best is None or len(missing) < len(best[1]):
            best = (found, missing)
    if download_allowed(download):
        from torchvision.datasets import FashionMNIST

        root = roots[-1]
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
        found, missing = _fmnist_files(root / "FashionMNIST" / "raw")
        if not missing:
            return _read_fmnist(found, root / "FashionMNIST" / "raw")
    assert best is not None
    where = " or ".join(str(d) for d in candidates)
    raise DataError(
        f"Fashion-MNIST not found: missing {', '.join(best[1])} (.gz or not) in {where}. Fix: "
        f"`sudo apt-get install dataset-fashion-mnist` (installs them in {FMNIST_DIR}), or pass --data-dir with "
        "the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, or, on a machine with network, allow torchvision to download them "
        "(DataConfig.download=True or MIXERLAB_DOWNLOAD=1).")


def _read_fmnist(files: dict[str, Path], directory: Path) -> RawSplits:
    splits = {}
    for split in ("train", "eval"):
        img_path, lab_path = files[f"{split}_images"], files[f"{split}_labels"]
        images = read_idx(img_path, ndim=3, type_code=0x08)
        labels = read_idx(lab_path, ndim=1, type_code=0x08).long()
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{lab_path}: {labels.shape[0]} labels but {img_path} has {images.shape[0]} images; "
                            "the files belong to different datasets or one is damaged, replace them")
        _check_labels(labels, 10, lab_path)
        splits[split] = (images.unsqueeze(1), labels)
    if splits["train"][0].shape[1:] != splits["eval"][0].shape[1:]:
        raise DataError(f"{files['eval_images']}: images of shape {tuple(splits['eval'][0].shape[2:])} but "
                        f"{files['train_images']} has {tuple(splits['train'][0].shape[2:])}; use matching files")
    return RawSplits(*splits["train"], *splits["eval"], list(FMNIST_CLASSES), directory, list(files.values()))


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError) as err:
        raise DataError(f"{path}: cannot read the CIFAR batch ({err}); the file is corrupt, replace it") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict (torchvision CIFAR layout), got {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise DataError(f"{path}: keys {sorted(d)} lack b'data' or {label_key!r}; not a CIFAR batch of this dataset")
    data = np.asarray(d[b"data"])
    labels = torch.as_tensor(np.asarray(d[label_key], dtype=np.int64))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072); the file is corrupt")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.numel()} labels for {data.shape[0]} images; the file is corrupt")
    _check_labels(labels, num_classes, path)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


def load_cifar(name: str, data_dir: str | None, download: bool) -> RawSplits:
    """Read torchvision's on-disk CIFAR layout: data_dir/<folder>/ or data_dir itself being <folder>."""
    folder, train_files, test_file, meta_file, label_key, names_key, num_classes = CIFAR[name]
    root = Path(data_dir) if data_dir else download_root()
    candidates = [root / folder, root] if root.name != folder else [root]
    directory = next((d for d in candidates if all((d / f).is_file() for f in [*train_files, test_file])), None)
    if directory is None and download_allowed(download):
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
        directory = root / folder
    if directory is None:
        missing = [f for f in [*train_files, test_file] if not (candidates[0] / f).is_file()]
        raise DataError(
            f"{name} not found: missing {', '.join(missing)} in {candidates[0]}. Fix: pass --data-dir with the "
            f"directory holding {folder}/ (torchvision's layout, e.g. from torchvision.datasets."
            f"{'CIFAR10' if name == 'cifar10' else 'CIFAR100'}(root, download=True) on a machine with network), "
            "or allow the download here (DataConfig.download=True or MIXERLAB_DOWNLOAD=1).")
    parts = [_cifar_batch(directory / f, label_key, num_classes) for f in train_files]
    eval_images, eval_labels = _cifar_batch(directory / test_file, label_key, num_classes)
    classes = [f"class_{i}" for i in range(num_classes)]
    if (directory / meta_file).is_file():
        names = _unpickle(directory / meta_file).get(names_key)
        if names is not None and len(names) == num_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    files = [directory / f for f in [*train_files, test_file]]
    return RawSplits(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), eval_images, eval_labels,
                     classes, directory, files)
