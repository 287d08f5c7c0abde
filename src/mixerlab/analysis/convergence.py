"""Convergence (SPEC 8.8; Zhou et al., 2023, "Interpret Vision Transformers as ConvNets with Dynamic
Convolutions"): how fast runs reach an accuracy, e.g. softmax vs ReLU vs LayerNorm attention (``attn_act``).

Zhou et al. report that replacing softmax, the activation of attention's dynamic kernel, by a ConvNet module
converges faster. From each run directory written by ``mixerlab train`` (read through :class:`RunDir` only):

* **Curves.** Per evaluated epoch ``k`` (1-based: epochs trained), eval top-1 and error ``100 - top-1`` (%),
  and the cumulative wall seconds ``sum of epoch_s`` over epochs ``1..k`` (training plus the epoch-end
  evaluation, as the engine logs them; epochs without an evaluation still add their time).
* **Time to target.** ``epochs_to_target``: the first evaluated epoch whose top-1 is ``>= target_top1``;
  ``seconds_to_target``: the cumulative seconds at that epoch. ``None`` when the run never reaches it.
  With no target given, the target is the highest accuracy every run reaches, ``min over runs of their best
  top-1`` (runs without an evaluated epoch left out), so that every such run has a time to compare.
* **Labels.** ``model`` plus its ``model_args`` (``u_swin_micro attn_act=relu``); runs with equal labels get
  their directory name appended.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_number, fail
from ..train import RunDir
from .base import Record
from .cli import AnalysisCommand, register

TARGET_DEFAULT = "min over runs of their best eval top-1"


@dataclass
class ConvergenceRun:
    """One run's curves (aligned lists, one entry per evaluated epoch) and its time to the target."""

    run_dir: str
    label: str
    model: str
    model_args: dict[str, Any]
    status: str  # the record's (completed | diverged | failed), or 'running' while it has no record
    epochs_trained: int = 0  # rows of metrics.jsonl (evaluated or not)
    epochs: list[int] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    error: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_top1: float | None = None
    final_top1: float | None = None
    epochs_to_target: int | None = None
    seconds_to_target: float | None = None


@dataclass
class ConvergenceRecord(Record):
    target_top1: float = 0.0
    target_source: str = "given"  # or TARGET_DEFAULT
    runs: list[ConvergenceRun] = field(default_factory=list)


def _curve(run: RunDir) -> tuple[int, list[int], list[float], list[float]]:
    """Epochs trained, evaluated epochs (1-based), their top-1 and cumulative seconds, from ``metrics.jsonl``."""
    epochs, top1, seconds = [], [], []
    elapsed = 0.0
    rows = run.metrics()
    for row in rows:
        elapsed += float(row["epoch_s"])
        if row.get("eval_top1") is not None:
            epochs.append(int(row["epoch"]) + 1)
            top1.append(float(row["eval_top1"]))
            seconds.append(elapsed)
    return len(rows), epochs, top1, seconds


def convergence(run_dirs: Sequence[str | Path], target_top1: float | None = None, *,
                figures: bool = True) -> ConvergenceRecord:
    """Error-vs-epoch curves and epochs / seconds to ``target_top1`` (%) of ``run_dirs``; see the module
    docstring. ``figures``: build the comparison figure (one curve per run)."""
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        fail("run_dirs", run_dirs, "a non-empty list of run directories written by `mixerlab train`")
    if target_top1 is not None:
        check_number("target_top1", target_top1, 0.0, 100.0, low_open=True, high_open=False)
    runs = [RunDir(p) for p in run_dirs]
    for i, run in enumerate(runs):
        if not run.config_path.is_file():
            raise ConfigError(f"run_dirs[{i}]={str(run.root)!r} is invalid: no {run.config_path.name} there (not a "
                              "run directory written by `mixerlab train`)")
    out = []
    for run in runs:
        cfg = run.config()
        trained, epochs, top1, seconds = _curve(run)
        out.append(ConvergenceRun(
            str(run.root), _label(cfg.model, cfg.model_args), cfg.model, dict(cfg.model_args),
            run.record().status if run.record_path.is_file() else "running", trained, epochs, top1,
            [100.0 - t for t in top1], seconds, max(top1, default=None), top1[-1] if top1 else None))
    _disambiguate(out)
    source = "given"
    if target_top1 is None:
        bests = [r.best_top1 for r in out if r.best_top1 is not None]
        if not bests:
            raise ConfigError("target_top1=None is invalid here: no run has an evaluated epoch to take a default "
                              "target from; give target_top1")
        target_top1, source = min(bests), TARGET_DEFAULT
    for r in out:
        hit = next((k for k, t in enumerate(r.top1) if t >= target_top1), None)
        if hit is not None:
            r.epochs_to_target, r.seconds_to_target = r.epochs[hit], r.seconds[hit]
    rec = ConvergenceRecord(source={"kind": "runs", "run_dirs": [str(r.root) for r in runs]},
                            target_top1=target_top1, target_source=source, runs=out)
    if figures:
        rec.figures = {"curves": _figure(rec)}
    return rec


def _label(model: str, model_args: dict[str, Any]) -> str:
    return " ".join([model, *(f"{k}={v}" for k, v in sorted(model_args.items()))])


def _disambiguate(runs: list[ConvergenceRun]) -> None:
    for _, group in itertools.groupby(sorted(runs, key=lambda r: r.label), key=lambda r: r.label):
        same = list(group)
        if len(same) > 1:
            for r in same:
                r.label = f"{r.label} ({Path(r.run_dir).name})"


def _figure(rec: ConvergenceRecord) -> Any:
    # Imported here so that `mixerlab` commands that never draw do not pay for matplotlib at start-up.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), layout="constrained")
    by_epoch, by_time = fig.subplots(1, 2)
    for i, r in enumerate(rec.runs):
        style = {"color": f"C{i % 10}", "marker": "o", "markersize": 3, "label": r.label}
        by_epoch.plot(r.epochs, r.error, **style)
        by_time.plot(r.seconds, r.error, **style)
        if r.epochs_to_target is not None:  # where the run first reaches the target (a marker, not a line)
            hit = r.epochs.index(r.epochs_to_target)
            by_epoch.scatter([r.epochs_to_target], [r.error[hit]], color=style["color"], marker="*", s=90, zorder=3)
            by_time.scatter([r.seconds_to_target], [r.error[hit]], color=style["color"], marker="*", s=90, zorder=3)
    target = f"target top-1 {rec.target_top1:.2f}% (*: first reached)"
    by_epoch.set(xlabel="epoch", ylabel="eval error (%)", title=f"error vs epoch; {target}")
    by_time.set(xlabel="wall seconds (train + eval)", ylabel="eval error (%)", title="error vs time")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend(fontsize="small")
    return fig


# ---- CLI --------------------------------------------------------------------------------------------------------
def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run directories of `mixerlab train`")
    p.add_argument("--target", type=float, default=None,
                   help=f"target eval top-1 in %% (default: {TARGET_DEFAULT})")


def _run(args: argparse.Namespace) -> ConvergenceRecord:
    return convergence(args.runs, args.target)


def _fmt(v: float | None, spec: str) -> str:
    return "never" if v is None else format(v, spec)


def _table(rec: Record) -> str:
    assert isinstance(rec, ConvergenceRecord)
    source = "" if rec.target_source == "given" else f" ({rec.target_source})"
    width = max(len("run"), *(len(r.label) for r in rec.runs))
    lines = [f"target eval top-1: {rec.target_top1:.2f}%{source}",
             f"{'run':{width}} {'status':9} {'epochs':>6} {'final':>7} {'best':>7} {'ep->tgt':>7} {'s->tgt':>8}"]
    for r in rec.runs:
        lines.append(f"{r.label:{width}} {r.status:9} {r.epochs_trained:6d} {_fmt(r.final_top1, '7.2f'):>7} "
                     f"{_fmt(r.best_top1, '7.2f'):>7} {_fmt(r.epochs_to_target, 'd'):>7} "
                     f"{_fmt(r.seconds_to_target, '8.1f'):>8}")
    lines.append("final / best: eval top-1 (%); ep->tgt: first epoch at or above the target; s->tgt: cumulative "
                 "seconds (train + eval) to it; never: not reached")
    return "\n".join(lines)


register(AnalysisCommand(
    name="convergence", help="convergence: error vs epoch, epochs and seconds to a target top-1 (Zhou et al.)",
    configure=_configure, run=_run, table=_table, needs_model=False))
