"""Metrics: top-k counts, peak memory and the run's JSON-lines logs, ``metrics.jsonl`` (one object per epoch,
with optional TensorBoard scalars) and ``steps.jsonl`` (one object every ``log_every_steps`` optimiser steps).

Only rank 0 writes. Each line is appended, flushed and fsync'd; on resume the lines the checkpoint does not
cover (epochs it has not completed, steps after its global step) are dropped, since a crash between a log line
and the next checkpoint would otherwise leave duplicates. File names come from ``rundir.py``; readers use
:class:`~mixerlab.train.RunDir`."""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write
from .rundir import read_jsonl

# Keys whose values depend on the machine's speed, not on the computation (left out of exactness checks).
TIMING_KEYS = ("epoch_s", "images_per_s", "peak_mem_mb")


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k clipped to the classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == target[:, None]
    return [hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU, the process's max RSS on CPU (ru_maxrss is KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class JsonlLog:
    """An append-only JSON-lines file, durable line by line; ``enabled`` False (ranks > 0) makes it a no-op."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Keep the rows for which ``keep`` is true (rewritten atomically); return them."""
        rows = [r for r in read_jsonl(self.path) if keep(r)]
        if self.enabled and self.path.is_file():
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            atomic_write(self.path, lambda f: f.write(text.encode()))
        return rows

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


class MetricsLog(JsonlLog):
    """``metrics.jsonl``, mirrored to TensorBoard scalars (x axis: the epoch) when ``tensorboard_dir`` is given."""

    def __init__(self, path: Path, enabled: bool, tensorboard_dir: Path | None) -> None:
        super().__init__(path, enabled)
        self.writer = None
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(tensorboard_dir))

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
