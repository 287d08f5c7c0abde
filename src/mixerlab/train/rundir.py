"""The run-directory contract: the one definition of every file a run writes, and the one reader of them.

Layout of ``<run_dir>/`` (only rank 0 writes)::

    config.yaml                 the full TrainConfig, written before training starts
    metrics.jsonl               one JSON object per completed epoch (see ``metrics.py``)
    steps.jsonl                 one JSON object every ``log_every_steps`` optimiser steps (when > 0)
    record.json                 the RunRecord: outcome, resolved model config and the hashes
    checkpoints/latest.json     the manifest naming the newest complete weights + state pair
    checkpoints/step-*.{safetensors,state.pt}
    tb/                         TensorBoard scalars (when ``tensorboard`` is on)

The engine, the metrics logs, the checkpoint code and ``evaluate`` take their names from here, and everything
that reads a run (reports, studies, evaluation) goes through :class:`RunDir`, so a renamed file cannot leave a
reader behind.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from ..archs import MixerNet, build_model
from ..errors import ConfigError, check_choice, check_keys
from .config import TrainConfig

if TYPE_CHECKING:  # checkpoint.py imports the names below, so this module imports it lazily
    from .checkpoint import Checkpoint

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"
RECORD = "record.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "latest.json"
TENSORBOARD = "tb"
# Everything a run owns at the top of its directory: what marks a directory as holding a run, and what
# overwrite=True deletes (nothing else, so a run dir may sit next to the user's own files).
RUN_FILES = (CONFIG, METRICS, STEPS, RECORD, CHECKPOINTS, TENSORBOARD)
WEIGHTS = ("model", "ema")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or belongs to another model; the message says which and why."""


@dataclass
class RunRecord:
    """The outcome of a run (``<run_dir>/record.json``).

    ``model_config`` is the resolved config of the built model (``model.config.to_dict()``), so a run can be
    rebuilt without re-resolving names and overrides; ``model_config_hash`` equals the checkpoint manifest's,
    ``train_config_hash`` is :meth:`TrainConfig.hash` (the experiment, run control excluded)."""

    status: str  # completed | diverged | failed
    run_dir: str
    model: str
    params: int = 0
    epochs: int = 0
    epochs_completed: int = 0
    global_step: int = 0
    best_top1: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    epoch_times: list[float] = field(default_factory=list)
    diverged_step: int | None = None
    last_finite_loss: float | None = None
    error: str | None = None
    world_size: int = 1
    device: str = "cpu"
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    model_config_hash: str | None = None
    train_config_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a record from another version is not guessed at)."""
        check_keys(cls, d, "record keys")
        return cls(**d)


def find_manifest(path: str | Path) -> Path:
    """A run dir, its ``checkpoints`` dir or a manifest file -> the manifest path."""
    p = Path(path)
    for cand in (p, p / MANIFEST, p / CHECKPOINTS / MANIFEST):
        if cand.is_file():
            return cand
    raise CheckpointError(f"checkpoint={str(path)!r} is invalid: no {MANIFEST} there or under "
                          f"{p / CHECKPOINTS}; give a run dir, its checkpoints dir or a manifest")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; an absent file has none (a run that has not logged yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunDir:
    """Read one run directory: its files by name, the record, the logs, the configs and the trained model."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        self.config_path = self.root / CONFIG
        self.metrics_path = self.root / METRICS
        self.steps_path = self.root / STEPS
        self.record_path = self.root / RECORD
        self.checkpoint_dir = self.root / CHECKPOINTS
        self.manifest_path = self.checkpoint_dir / MANIFEST
        self.tensorboard_dir = self.root / TENSORBOARD

    @classmethod
    def find(cls, path: str | Path) -> RunDir:
        """The run directory of a run dir, its ``checkpoints`` dir or its manifest (what ``mixerlab eval`` takes)."""
        mpath = find_manifest(path)
        return cls(mpath.parent.parent)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def holds_run(self) -> bool:
        return any((self.root / name).exists() for name in RUN_FILES)

    def has_checkpoint(self) -> bool:
        return self.manifest_path.is_file()

    # ---- what the run wrote ------------------------------------------------------------------
    def record(self) -> RunRecord:
        if not self.record_path.is_file():
            raise ConfigError(f"{self.record_path} is missing: the run has not ended ({RECORD} is written when "
                              "it completes, diverges or fails)")
        try:
            d = json.loads(self.record_path.read_text())
            if not isinstance(d, dict):
                raise ConfigError("a JSON object was expected")
            return RunRecord.from_dict(d)
        except (ValueError, TypeError) as e:  # ConfigError is a ValueError, as are JSON decode errors
            raise ConfigError(f"{self.record_path} is invalid: {e}") from e

    def metrics(self) -> list[dict[str, Any]]:
        """Per-epoch rows of ``metrics.jsonl`` (epoch, step, train_loss, lr, eval_*, timings)."""
        return read_jsonl(self.metrics_path)

    def steps(self) -> list[dict[str, Any]]:
        """Per-step rows of ``steps.jsonl`` (epoch, step, global_step, loss, lr, images_seen); empty when the run
        had ``log_every_steps=0``."""
        return read_jsonl(self.steps_path)

    def config(self) -> TrainConfig:
        if not self.config_path.is_file():
            raise ConfigError(f"run_dir={str(self.root)!r} is invalid: no {CONFIG} there (not a run directory)")
        return TrainConfig.from_dict(yaml.safe_load(self.config_path.read_text()) or {})

    def model_config(self) -> dict[str, Any]:
        """The resolved model config as stored: the record's, or while the run is going the checkpoint's."""
        if self.record_path.is_file():
            return self.record().model_config
        return self.manifest()["model_config"]

    def manifest(self) -> dict[str, Any]:
        """The newest checkpoint's manifest (format checked; weights not read)."""
        from .checkpoint import read_manifest

        self._require_checkpoint()
        return read_manifest(self.manifest_path)

    def checkpoint(self, *, with_state: bool = False) -> Checkpoint:
        """The newest checkpoint, checksums verified."""
        from .checkpoint import load_checkpoint

        self._require_checkpoint()
        return load_checkpoint(self.manifest_path, with_state=with_state)

    def load_model(self, which: str = "model", device: str | torch.device = "cpu") -> MixerNet:
        """The checkpoint's model (``which='model'``) or its EMA (``'ema'``), built from the stored resolved
        config with the weights loaded, in eval mode on ``device``."""
        check_choice("which", which, WEIGHTS)
        ck = self.checkpoint()
        weights = ck.model_weights(f"{which}.")
        if not weights:
            raise CheckpointError(f"which={which!r} is invalid for {self.manifest_path}: the checkpoint holds no "
                                  f"{which} weights (EMA weights exist only for runs trained with ema=True)")
        model = build_model(ck.manifest["model_config"])
        model.load_state_dict(weights)
        return model.to(device).eval()

    # ---- helpers ---------------------------------------------------------------------------------
    def _require_checkpoint(self) -> None:
        if not self.has_checkpoint():
            raise CheckpointError(f"{self.manifest_path} is missing: the run in {self.root} has no checkpoint "
                                  "(it never completed an epoch or a ckpt_every_steps interval)")
