"""Per-epoch metrics: top-k counts, peak memory, ``metrics.jsonl`` (one JSON object per epoch) and optional
TensorBoard scalars. Only rank 0 writes. Each line is appended, flushed and fsync'd; on resume the lines of
epochs that the checkpoint has not completed are dropped (a crash between the metrics line and the checkpoint
would otherwise leave a duplicate)."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write

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


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, before_epoch: int) -> list[dict[str, Any]]:
        """Keep the lines of epochs < ``before_epoch`` (rewritten atomically); return them."""
        rows = [r for r in self.read() if r["epoch"] < before_epoch]
        if self.enabled:
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
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
