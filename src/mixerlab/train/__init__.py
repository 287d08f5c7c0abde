"""Training and evaluation: ``train(TrainConfig) -> RunRecord`` (single process, DDP under torchrun or srun),
``evaluate(checkpoint, DataConfig) -> dict``; recipes are :class:`TrainConfig` objects or YAML files, and a
finished (or running) run is read back through :class:`RunDir`."""

from __future__ import annotations

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .engine import evaluate, train
from .rundir import CheckpointError, RunDir, RunRecord

__all__ = ["CheckpointError", "RunDir", "RunRecord", "TrainConfig", "evaluate", "load_checkpoint", "train"]
