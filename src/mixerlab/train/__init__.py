"""Training and evaluation: ``train(TrainConfig) -> RunRecord`` (single process, DDP under torchrun or srun),
``evaluate(checkpoint, DataConfig) -> dict``; recipes are :class:`TrainConfig` objects or YAML files."""

from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig
from .engine import RunRecord, evaluate, train

__all__ = ["CheckpointError", "RunRecord", "TrainConfig", "evaluate", "load_checkpoint", "train"]
