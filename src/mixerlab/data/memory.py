"""In-memory uint8 image datasets with batched tensor transforms (fashion-mnist, cifar).

All images of a split live in one uint8 tensor (N, C0, H, W), normally already resized to img_size (done once,
bilinear with antialias). A batch of indices is transformed in a handful of tensor ops instead of a PIL pipeline
per sample: random crop with zero padding p = img_size // 8 plus horizontal flip is one gather (flat index =
row table[oy] + column table[ox, flip], tables of (2p + 1) x img_size entries), and normalisation is
``x = u * (1 / (255 std)) - mean / std``. ``DataLoader`` calls ``__getitems__`` with the whole batch of indices,
so this costs microseconds per image, and the loader's :func:`collate` hands the stacked batch over as is. Random
numbers come from torch's global RNG (python's ``random`` for RandAugment / erasing), which DataLoader seeds per
worker from the loader's generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate

# Resized copies larger than this are not cached: batches are then resized on the fly from the native size.
RESIZE_CACHE_BYTES = 2 << 30
# ITU-R 601-2 luma, as PIL's convert("L").
LUMA = (0.299, 0.587, 0.114)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 8192) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, bilinear with antialias (identity when already sized)."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.cat([F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                      for c in images.split(chunk)])


def to_grey(images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> (N, 1, H, W) uint8 luma, rounded like PIL."""
    w = torch.tensor(LUMA).view(1, 3, 1, 1)
    return torch.cat([(c.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
                      for c in images.split(chunk)])


def pixel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of u / 255 over a (N, C, H, W) uint8 tensor (float64 sums)."""
    s = torch.zeros(images.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for c in images.split(chunk):
        x = c.to(torch.float64) / 255
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
    n = images.numel() / images.shape[1]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def prepare(images: torch.Tensor, img_size: int, in_chans: int) -> torch.Tensor:
    """Channel conversion (RGB -> grey when in_chans is 1) and the one-off resize, unless it would be too big.

    Grey images stay one channel in memory; they are repeated to three channels per batch.
    """
    if in_chans == 1 and images.shape[1] == 3:
        images = to_grey(images)
    if images.shape[0] * images.shape[1] * img_size * img_size <= RESIZE_CACHE_BYTES:
        images = resize_uint8(images, img_size)
    return images


def _crop_offsets(s: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat row starts (O, s) and column indices (2 flips x O, s) of every crop of the (s + 2p)^2 padded image."""
    ar = torch.arange(s)
    off = torch.arange(2 * p + 1)[:, None]
    rows = (off + ar) * (s + 2 * p)
    cols = torch.cat([off + ar, off + (s - 1 - ar)])
    return rows, cols


class Batch(list):
    """A batch's ``(x_i, y_i)`` items, usable by any collate_fn, plus the stacked tensors :func:`collate` returns."""

    x: torch.Tensor
    y: torch.Tensor


def collate(data: list) -> Any:
    """DataLoader collate_fn: a :class:`Batch` is already stacked; anything else goes to ``default_collate``."""
    if isinstance(data, Batch):
        return data.x, data.y
    return default_collate(data)


class InMemoryImages(Dataset):
    """Items ``(float tensor (in_chans, img_size, img_size), int label)``; see the module docstring."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, img_size: int, in_chans: int,
                 mean: tuple[float, ...], std: tuple[float, ...], augment: str = "none",
                 random_erasing: float = 0.0) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, in_chans):
            raise ValueError(f"images must be uint8 (N, 1 or {in_chans}, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.img_size = img_size
        self.in_chans = in_chans
        self.augment = augment
        std_t = torch.tensor(std, dtype=torch.float32).expand(in_chans)
        mean_t = torch.tensor(mean, dtype=torch.float32).expand(in_chans)
        self.scale = (1.0 / (255.0 * std_t)).view(1, in_chans, 1, 1)
        self.shift = (-mean_t / std_t).view(1, in_chans, 1, 1)
        self.pad = max(1, img_size // 8)
        self.crop_rows, self.crop_cols = _crop_offsets(img_size, self.pad)
        self.randaug = None
        if augment == "randaug":
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(min(255, round(255 * m)) for m in mean[:images.shape[1]])
            self.randaug = rand_augment_transform(
                "rand-m9-mstd0.5", {"translate_const": int(img_size * 0.45), "img_mean": fill})
        self.erasing = None
        if random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(probability=random_erasing, mode="pixel", device="cpu")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        # A batch is ~100k elements per op: too little for intra-op threads to pay off, and on a loaded machine
        # their synchronisation made each op ~1000x slower (measured: 24 ms vs 29 us for one uint8->float).
        threads = torch.get_num_threads()
        if threads == 1:
            return self._batch(indices)
        torch.set_num_threads(1)
        try:
            return self._batch(indices)
        finally:
            torch.set_num_threads(threads)

    def _batch(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        u = resize_uint8(self.images[idx], self.img_size)
        if self.augment != "none":
            u = self._crop_flip(u)
        if self.randaug is not None:
            u = torch.stack([self._randaug_one(img) for img in u])
        u = u.expand(-1, self.in_chans, -1, -1)
        x = torch.addcmul(self.shift, u.float(), self.scale)
        if self.erasing is not None:
            x = self.erasing(x)
        y = self.labels[idx]
        out = Batch(zip(x.unbind(0), y.tolist(), strict=True))
        out.x, out.y = x, y
        return out

    def _crop_flip(self, u: torch.Tensor) -> torch.Tensor:
        """Random crop of the zero-padded image (offsets 0..2p) and horizontal flip with p = 0.5, as one gather."""
        b, c, s, _ = u.shape
        side = s + 2 * self.pad
        padded = F.pad(u, (self.pad,) * 4).view(b, c, side * side)
        rows = self.crop_rows[torch.randint(0, self.crop_rows.shape[0], (b,))]
        cols = self.crop_cols[torch.randint(0, self.crop_cols.shape[0], (b,))]
        idx = (rows[:, :, None] + cols[:, None, :]).view(b, 1, s * s).expand(b, c, s * s)
        return padded.gather(2, idx).view(b, c, s, s)

    def _randaug_one(self, img: torch.Tensor) -> torch.Tensor:
        """RandAugment needs PIL: (C, S, S) uint8 -> PIL -> augmented -> (C, S, S) uint8."""
        grey = img.shape[0] == 1
        arr = img[0].numpy() if grey else img.permute(1, 2, 0).numpy()
        out = np.asarray(self.randaug(Image.fromarray(np.ascontiguousarray(arr), "L" if grey else "RGB")))
        t = torch.from_numpy(out.copy())
        return t[None] if grey else t.permute(2, 0, 1)
