"""``build_data`` (config -> train/eval datasets) and ``loader`` (dataset -> deterministic DataLoader).

Order determinism: the shuffled order of epoch ``e`` is a permutation drawn from a generator seeded with
``seed * 1_000_003 + e`` (a prime stride keeps (seed, epoch) pairs from colliding for epoch < 1e6), both for the
single-process :class:`EpochSampler` and for ``DistributedSampler`` (which adds the epoch to its seed itself), so
that an epoch's order does not depend on how many epochs were iterated before (resumable).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .core import IMAGENET_GREY, STATS, DataBundle, DataConfig, DataError, stratified_subset
from .folder import build_imagefolder, imagefolder_transforms, scan_imagefolder
from .memory import InMemoryImages, collate, pixel_stats, prepare, to_grey
from .sources import RawSplits, load_cifar, load_fashion_mnist

log = logging.getLogger("mixerlab.data")
SEED_STRIDE = 1_000_003
# Decoded + resized splits kept per process, so that a study building the same data many times decodes it once.
_CACHE: OrderedDict[tuple, tuple[tuple | None, tuple[RawSplits, tuple, tuple]]] = OrderedDict()
_CACHE_SIZE = 2


def _resolve_stats(cfg: DataConfig, native: tuple[tuple[float, ...], tuple[float, ...]]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Given mean/std (one value broadcast to all channels) or the dataset's, repeated for grey -> 3 channels."""
    out = []
    for given, default in ((cfg.mean, native[0]), (cfg.std, native[1])):
        values = tuple(float(v) for v in (given if given is not None else default))
        out.append(values * cfg.in_chans if len(values) == 1 else values)
    return out[0], out[1]


def _load_archive(cfg: DataConfig) -> tuple[RawSplits, tuple, tuple]:
    """Decoded splits prepared for (img_size, in_chans), and the dataset's statistics in that channel space."""
    raw = load_fashion_mnist(cfg.data_dir, cfg.download) if cfg.name == "fashion-mnist" else \
        load_cifar(cfg.name, cfg.data_dir, cfg.download)
    stats = STATS[cfg.name]
    if cfg.in_chans == 1 and raw.train_images.shape[1] == 3:
        stats = pixel_stats(to_grey(raw.train_images))
    raw.train_images = prepare(raw.train_images, cfg.img_size, cfg.in_chans)
    raw.eval_images = prepare(raw.eval_images, cfg.img_size, cfg.in_chans)
    return raw, stats[0], stats[1]


def _stamp(files: list[Path]) -> tuple | None:
    try:
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except OSError:
        return None


def _cached_archive(cfg: DataConfig) -> tuple[RawSplits, tuple, tuple]:
    """``_load_archive`` memoised on (config fields it depends on, file identities): a hit skips decoding."""
    key = (cfg.name, cfg.data_dir, cfg.img_size, cfg.in_chans)
    hit = _CACHE.get(key)
    if hit is not None and _stamp(hit[1][0].files) == hit[0]:
        _CACHE.move_to_end(key)
        return hit[1]
    entry = _load_archive(cfg)
    _CACHE[key] = (_stamp(entry[0].files), entry)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def build_data(cfg: DataConfig) -> DataBundle:
    """Validate ``cfg``, read and check the dataset, and return the train/eval datasets with their metadata."""
    cfg.validate()
    if cfg.name == "imagefolder":
        return _build_imagefolder(cfg)
    raw, native_mean, native_std = _cached_archive(cfg)
    mean, std = _resolve_stats(cfg, (native_mean, native_std))
    num_classes = len(raw.classes)
    splits = []
    for images, labels, n, aug in ((raw.train_images, raw.train_labels, cfg.train_subset, cfg.augment),
                                   (raw.eval_images, raw.eval_labels, cfg.eval_subset, "none")):
        if n is not None:
            idx = stratified_subset(labels, n, num_classes, cfg.seed)
            images, labels = images[idx], labels[idx]
        splits.append(InMemoryImages(images, labels, img_size=cfg.img_size, in_chans=cfg.in_chans, mean=mean,
                                     std=std, augment=aug,
                                     random_erasing=cfg.random_erasing if aug != "none" else 0.0))
    return DataBundle(splits[0], splits[1], num_classes, mean, std, 0, list(raw.classes), cfg, str(raw.source))


def _build_imagefolder(cfg: DataConfig) -> DataBundle:
    assert cfg.data_dir is not None  # validate() guarantees it
    scan = scan_imagefolder(cfg.data_dir)
    if scan.bad and cfg.on_bad_image == "fail":
        listed = "; ".join(f"{p} ({e})" for p, e in list(scan.bad.items())[:5])
        raise DataError(f"{len(scan.bad)} undecodable image(s) under {cfg.data_dir}: {listed}. Fix: delete or "
                        "replace them, or set on_bad_image='skip' to drop and count them")
    if scan.bad:
        log.warning("skipped %d undecodable images (on_bad_image='skip'), e.g. %s", len(scan.bad),
                    ", ".join(list(scan.bad)[:5]))
    native = STATS["imagefolder"] if cfg.in_chans == 3 else IMAGENET_GREY
    mean, std = _resolve_stats(cfg, native)
    train_tf, eval_tf = imagefolder_transforms(cfg.img_size, cfg.augment, cfg.random_erasing, mean, std)
    train, evals = build_imagefolder(cfg.data_dir, scan, cfg.in_chans, train_tf, eval_tf)
    parts: list[Dataset] = []
    for ds, n in ((train, cfg.train_subset), (evals, cfg.eval_subset)):
        if n is not None:
            idx = stratified_subset(torch.as_tensor(ds.targets), n, len(scan.classes), cfg.seed)
            parts.append(Subset(ds, idx.tolist()))
        else:
            parts.append(ds)
    return DataBundle(parts[0], parts[1], len(scan.classes), mean, std, len(scan.bad), list(scan.classes), cfg,
                      str(Path(cfg.data_dir)), sorted(scan.bad))


class EpochSampler(Sampler[int]):
    """Shuffled (train) or sequential indices; the permutation is fixed by (seed, epoch), see the module doc."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int = 0) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def loader(ds: Dataset, batch_size: int, *, train: bool, seed: int, epoch: int = 0, num_workers: int = 0,
           distributed: bool = False, drop_last: bool | None = None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order is fixed by (seed, epoch); call ``loader.sampler.set_epoch(e)`` to reuse it.

    ``drop_last=None``: drop the last incomplete batch when training, unless that would leave no batch at all.
    ``distributed``: a DistributedSampler over the default process group (eval ranks get padded shards, as usual).
    Worker processes are seeded from a generator fixed by (seed, epoch) too, so their augmentations repeat.
    """
    n = len(ds)  # type: ignore[arg-type]
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(ds, shuffle=train, seed=seed * SEED_STRIDE, drop_last=False)
        sampler.set_epoch(epoch)
        per_rank = len(sampler)
    else:
        sampler = EpochSampler(n, shuffle=train, seed=seed, epoch=epoch)
        per_rank = n
    if drop_last is None:
        drop_last = train and per_rank >= batch_size
    gen = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      pin_memory=pin_memory, generator=gen, collate_fn=collate)
