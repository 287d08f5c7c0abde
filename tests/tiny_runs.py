"""Shared test helpers (imported by test modules: pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mixerlab.data import DataConfig
from mixerlab.train import TrainConfig

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (make data)
needs_fmnist = pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason=f"{REAL_FMNIST} absent (make data)")

TINY_ARGS = {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}


def tiny(run_dir: Path, eval_subset: int = 128, **kw: Any) -> TrainConfig:
    """A seconds-long deterministic run: 192 images of 16x16 in batches of 32 (6 optimiser steps per epoch)."""
    base = dict(model="u_convnext_micro", model_args=TINY_ARGS, drop_path=0.1, run_dir=str(run_dir),
                data=DataConfig(img_size=16, train_subset=192, eval_subset=eval_subset, augment="light"),
                batch_size=32, eval_batch_size=64, epochs=2, warmup_epochs=1, lr=2e-3, deterministic=True,
                device="cpu")
    return TrainConfig(**{**base, **kw})
