"""Datasets for mixerlab: Fashion-MNIST (default, CPU-friendly), CIFAR-10/100 and ImageNet-style folders.

``build_data(DataConfig(...))`` validates the config, reads and checks the data (``DataError`` naming the file
and the fix otherwise) and returns a :class:`DataBundle`; ``loader(ds, batch_size, train=..., seed=..., epoch=...)``
wraps a split in a DataLoader whose order is fixed by (seed, epoch).
"""

from __future__ import annotations

from .build import EpochSampler, build_data, loader
from .core import DATASETS, STATS, DataBundle, DataConfig, DataError, stratified_subset
from .idx import read_idx
from .memory import InMemoryImages

__all__ = ["DATASETS", "STATS", "DataBundle", "DataConfig", "DataError", "EpochSampler", "InMemoryImages",
           "build_data", "loader", "read_idx", "stratified_subset"]
