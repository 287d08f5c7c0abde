"""Data configuration, the built bundle, errors and the stratified subset.

A :class:`DataConfig` names a dataset and how its images become model inputs: ``x = (u / 255 - mean) / std``
per channel, for ``u`` the uint8 pixel after resizing to ``img_size`` x ``img_size``, channel conversion to
``in_chans`` and (train only) augmentation. :func:`stratified_subset` picks ``n`` samples with per-class counts
that differ by at most one (a class with too few samples gives its shortfall to the others), chosen by a
``torch.Generator`` seeded with ``seed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, check_choice, check_int, check_number, fail, is_int

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
AUGMENTS = ("none", "light", "randaug")
ON_BAD_IMAGE = ("fail", "skip")

# Per-dataset pixel statistics of the train split, u / 255 (fashion-mnist and cifar computed over all train
# pixels; imagefolder uses ImageNet's). Grey variants of RGB datasets are computed from the data when needed.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# timm's convention for one-channel ImageNet models: the channel average of mean and std.
IMAGENET_GREY = ((0.449,), (0.226,))


class DataError(RuntimeError):
    """Missing, corrupt or inconsistent data; the message names the file and how to fix it."""


@dataclass
class DataConfig:
    """Which dataset and how its images are prepared (see the module docstring for the maths).

    ``augment``: ``none``; ``light`` = random crop with zero padding of img_size // 8 plus horizontal flip
    (RandomResizedCrop + flip for imagefolder); ``randaug`` = light + timm RandAugment ``rand-m9-mstd0.5``.
    ``random_erasing`` is the probability of timm's per-pixel random erasing on train images.
    ``download``: allow torchvision to download fashion-mnist / cifar when they are missing (also enabled by
    the environment variable ``MIXERLAB_DOWNLOAD=1``); off by default.
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    img_size: int = 32
    in_chans: int = 1
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_subset: int | None = None
    eval_subset: int | None = None
    seed: int = 0
    augment: str = "light"
    random_erasing: float = 0.0
    on_bad_image: str = "fail"
    download: bool = False

    def validate(self) -> None:
        check_choice("data.name", self.name, DATASETS)
        if self.name == "imagefolder" and not self.data_dir:
            raise ConfigError("data.data_dir=None is invalid: imagefolder needs a directory holding train/<class>/* "
                              "and val/<class>/*")
        check_int("data.img_size", self.img_size)
        if not is_int(self.in_chans) or self.in_chans not in (1, 3):  # check_choice would take True for 1
            fail("data.in_chans", self.in_chans, "allowed values are [1, 3]")
        for fname in ("mean", "std"):
            value = getattr(self, fname)
            if value is None:
                continue
            if not isinstance(value, (tuple, list)) or len(value) not in (1, self.in_chans):
                raise ConfigError(f"data.{fname}={value!r} is invalid: None or a tuple of 1 or "
                                  f"in_chans={self.in_chans} floats")
            if fname == "std" and any(float(s) <= 0 for s in value):
                raise ConfigError(f"data.std={value!r} is invalid: every std must be > 0")
        for fname in ("train_subset", "eval_subset"):
            value = getattr(self, fname)
            if value is not None and not (is_int(value) and value >= 1):
                fail(f"data.{fname}", value, "None (the whole split) or a positive integer")
        if not is_int(self.seed):
            fail("data.seed", self.seed, "an integer")
        check_choice("data.augment", self.augment, AUGMENTS)
        check_number("data.random_erasing", self.random_erasing, 0.0, 1.0, high_open=False)
        if self.random_erasing > 0 and self.augment == "none":
            raise ConfigError(f"data.random_erasing={self.random_erasing!r} is invalid with augment='none' "
                              "(no train augmentation): set random_erasing=0 or augment to 'light' or 'randaug'")
        check_choice("data.on_bad_image", self.on_bad_image, ON_BAD_IMAGE)
        if self.on_bad_image == "skip" and self.name != "imagefolder":
            raise ConfigError(f"data.on_bad_image='skip' is invalid for name={self.name!r}: its images come in "
                              "whole-split archives that cannot be partly skipped; use 'fail'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DataBundle:
    """Train/eval datasets ready for :func:`mixerlab.data.loader`; items are ``(float tensor (C, S, S), int)``."""

    train: Dataset
    eval: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: int = 0
    classes: list[str] = field(default_factory=list)
    config: DataConfig | None = None
    source: str = ""
    skipped_files: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_train": len(self.train),  # type: ignore[arg-type]
            "num_eval": len(self.eval),  # type: ignore[arg-type]
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "skipped": self.skipped,
        }
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files[:20]
        if self.source:
            out["source"] = self.source
        if self.config is not None:
            out["config"] = self.config.to_dict()
        return out


def stratified_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` samples, about ``n / K`` per class, fixed by ``seed``.

    Quotas: the ``n`` slots are split evenly over the classes that still have unused samples, the remainder
    going to the lowest class ids; classes that run out hand their share to the rest (water-filling).
    """
    total = labels.numel()
    if n > total:
        raise ConfigError(f"subset size {n} is invalid: the split has only {total} samples")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota = [0] * num_classes
    left = n
    while left > 0:
        active = [c for c in range(num_classes) if quota[c] < counts[c]]
        share, extra = divmod(left, len(active))
        for i, c in enumerate(active):
            take = min(share + (i < extra), counts[c] - quota[c])
            quota[c] += take
            left -= take
    gen = torch.Generator().manual_seed(seed)
    order = torch.argsort(labels, stable=True)  # indices grouped by class, ascending within a class
    picked = []
    start = 0
    for c in range(num_classes):
        members = order[start:start + counts[c]]
        start += counts[c]
        picked.append(members[torch.randperm(counts[c], generator=gen)[:quota[c]]])
    return torch.sort(torch.cat(picked)).values
