"""Run a training config to its outcome, reusing or resuming what its run directory already holds.

The one place that decides, for a :class:`TrainConfig` and its run directory, whether to train fresh, reuse a
finished outcome, resume from the last checkpoint or start over; the stability analysis and the study runner's
workers both go through :func:`train_or_resume`, so a rerun after any interruption behaves the same in both.
"""

from __future__ import annotations

import dataclasses

from . import engine
from .config import TrainConfig
from .rundir import RunDir, RunRecord

# Outcomes a rerun keeps: both are deterministic for a config (divergence included), so retraining would only
# repeat them. A 'failed' run (an exception during training) is retried.
FINAL = ("completed", "diverged")


def run_plan(cfg: TrainConfig) -> str:
    """What :func:`train_or_resume` will do with ``cfg``'s run dir: ``fresh`` (empty), ``reuse`` (a final outcome
    of the same experiment), ``resume`` (the same experiment, interrupted after a checkpoint), ``restart`` (the
    same experiment with nothing to keep) or ``clash`` (a run of another experiment, or one that cannot tell)."""
    run = RunDir(cfg.resolved_run_dir())
    if not run.holds_run():
        return "fresh"
    # The experiment the dir holds, from its most final file; a dir with only logs cannot tell, so it clashes.
    record = run.record() if run.record_path.is_file() else None
    if record is not None:
        stored = record.train_config_hash
    elif run.has_checkpoint():
        stored = run.manifest()["train_config_hash"]
    else:
        stored = run.config().hash() if run.config_path.is_file() else None
    if stored != cfg.hash():
        return "clash"
    if record is not None and record.status in FINAL:
        return "reuse"
    return "resume" if run.has_checkpoint() else "restart"


def train_or_resume(cfg: TrainConfig, plan: str | None = None) -> tuple[RunRecord, bool]:
    """The outcome of ``cfg`` and whether it was reused (no training in this call). ``plan``: :func:`run_plan`'s
    answer when the caller already has it. A run that raised during training is returned as its ``failed``
    record; an error before training began (bad data dir, ...) is not an outcome and propagates, as does a
    ``clash`` (:class:`ValueError` naming the dir: nothing is overwritten)."""
    plan = plan or run_plan(cfg)
    run = RunDir(cfg.resolved_run_dir())
    if plan == "clash":
        raise ValueError(f"run_dir={str(run.root)!r} holds a run of another config; use another directory")
    if plan == "reuse":
        return run.record(), True
    before = run.record_path.stat().st_mtime_ns if run.record_path.is_file() else None
    resume = plan == "resume"
    try:
        return engine.train(dataclasses.replace(cfg, resume=resume, overwrite=not resume)), False
    except Exception:
        # The engine writes record.json (status 'failed') when training itself raised; a record written by
        # this call is the outcome of the run. Anything else failed before training began: not an outcome.
        if run.record_path.is_file() and run.record_path.stat().st_mtime_ns != before:
            return run.record(), False
        raise
