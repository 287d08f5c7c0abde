"""Optimisation stability (SPEC 8.7; Xiao et al., 2021, "Early Convolutions Help Transformers See Better").

Xiao et al. find ViTs with a patchify stem sensitive to the optimiser (AdamW vs SGD), to lr / wd and to the
schedule length, and a convolutional stem far less so. The protocol here, per model and optimiser:

* **Sampling.** ``n`` multiplier pairs ``(m_lr, m_wd)``, each factor drawn independently and log-uniformly
  in ``[low, high]`` (default ``[1/8, 4]``), ``log m ~ U(log low, log high)``, from ``random.Random(seed)``.
  The *same* pairs scale every model's and optimiser's reference ``(lr, wd)``, so the comparison is paired
  (a common-random-numbers design: a patchify and a conv-stem model see identical perturbations).
* **References.** AdamW: the recipe's ``lr`` / ``weight_decay`` (small-grey recipe: 2e-3 / 0.05). SGD (timm's
  ``sgd``: momentum 0.9, Nesterov, as pycls): ``SGD_LR`` / ``SGD_WD`` below, mixerlab's choice for the
  small-grey recipe (batch 128), see their comment. Weight decay never applies to norms and biases.
* **Runs.** Each pair is trained for ``epochs`` epochs with the recipe otherwise unchanged, except that the
  warm-up is capped at half the schedule (``min(recipe warm-up, epochs // 2)``) so that a short schedule
  still spends most of its steps at the sampled lr. The schedule-length curve trains each optimiser at its
  reference ``(lr, wd)`` for every budget in ``schedule``.
* **Error.** ``100 - final eval top-1`` (%, the last epoch, as Xiao et al. report final error). A run whose
  record says ``diverged`` (non-finite loss) or ``failed`` counts as a failure with error 100.
* **EDF.** Per model and optimiser, the empirical distribution function of ``error - min(error)`` over the
  ``n`` runs: ``F(x) = #{i: e_i - e_min <= x} / n`` (right-continuous), stored as its points ``(x, F(x))``
  at each distinct value. A curve that rises fast means most sampled (lr, wd) land near the best.
* **AdamW-SGD gap** (percentage points, positive when SGD is worse), per model: ``best`` = min SGD error -
  min AdamW error (Xiao et al.'s optimiser-stability comparison at tuned hyper-parameters); ``median`` =
  median SGD error - median AdamW error; ``area`` = the signed area between the two EDFs of the raw errors,
  ``integral (F_adamw(e) - F_sgd(e)) de``, which equals mean SGD error - mean AdamW error.

Three separate steps, so that a study runner can execute the same runs in parallel or on a cluster:
:func:`stability_runs` (the runs as plain :class:`TrainConfig` objects, pure), :func:`run_local` (a plain,
resumable local loop) and :func:`aggregate_stability` (the record, from :class:`RunRecord` objects only).
:func:`stability` chains them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_choice, check_int, check_number, fail, is_int
from ..train import RunRecord, TrainConfig
from ..train.cli import parse_kv
from ..train.resume import run_plan, train_or_resume
from .base import Record
from .cli import AnalysisCommand, register

OPTIMISERS = ("adamw", "sgd")
# SGD reference for the small-grey recipe (batch 128, 32x32 grey, from scratch); Xiao et al. tune theirs at
# ImageNet scale (batch 2048), which does not transfer. lr 0.05 is the usual 0.1 per 256 images scaled to 128,
# and it was the best or within 1 point of the best in a pilot (2 epochs, 4,096 train / 1,000 eval images,
# wd 5e-5; eval top-1 at lr 0.02 / 0.05 / 0.1 / 0.2 / 0.5: vit_p_1gf 78.3 / 77.6 / 75.0 / 72.7 / 56.8,
# vit_c_1gf 81.5 / 81.7 / 78.2 / 71.8 / 49.7), so the x1/8 .. x4 interval spans both sides of the optimum.
# wd 5e-5 is a coupled L2 value as SGD-trained ImageNet models use (AdamW's 0.05 is decoupled, not comparable).
SGD_LR = 0.05
SGD_WD = 5e-5
SGD_MOMENTUM = 0.9
# Error given to a run that diverged or failed: it counts as a failure, not as a missing point.
FAILED_ERROR = 100.0
DEFINITIONS = {
    "error": "100 - final eval top-1 (%); a diverged or failed run has error 100",
    "edf": "points (x, F(x)) of F(x) = #{runs with error - best error <= x} / n, at each distinct x",
    "gap.best": "min SGD error - min AdamW error (pp; > 0: SGD worse)",
    "gap.median": "median SGD error - median AdamW error (pp)",
    "gap.area": "signed area between the raw-error EDFs, integral (F_adamw - F_sgd) de = mean SGD - mean AdamW (pp)",
}


@dataclass
class StabilitySpec:
    """What to measure. ``base`` is the recipe (data, batch, schedule shape, clipping); the runs replace its
    model, optimiser, lr, wd, momentum (SGD), epochs, warm-up (capped) and run dir. ``model_args`` applies to
    every model (on top of the recipe's). Run dirs: ``<runs_dir>/<model>/<opt>/sweep-<i>`` and
    ``<runs_dir>/<model>/<opt>/epochs-<E>``."""

    runs_dir: str | Path = "runs/stability"
    models: list[str] = field(default_factory=lambda: ["vit_p_1gf", "vit_c_1gf"])
    model_args: dict[str, Any] = field(default_factory=dict)
    optimisers: list[str] = field(default_factory=lambda: list(OPTIMISERS))
    n: int = 8
    epochs: int = 2
    schedule: list[int] = field(default_factory=lambda: [1, 2, 4])
    low: float = 1 / 8
    high: float = 4.0
    seed: int = 0
    sgd_lr: float = SGD_LR
    sgd_wd: float = SGD_WD
    base: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> StabilitySpec:
        """Raise :class:`ConfigError` naming the field for any value that cannot work (cheap: no training)."""
        from ..zoo import list_models

        if not isinstance(self.runs_dir, (str, Path)) or not str(self.runs_dir):
            fail("runs_dir", self.runs_dir, "a directory path")
        if not isinstance(self.models, list) or not self.models or len(set(self.models)) != len(self.models):
            fail("models", self.models, "a non-empty list of distinct registered model names")
        for m in self.models:
            check_choice("models", m, list_models())
        if not isinstance(self.optimisers, list) or not self.optimisers or len(set(self.optimisers)) != len(
                self.optimisers):
            fail("optimisers", self.optimisers, f"a non-empty list of distinct values of {list(OPTIMISERS)}")
        for o in self.optimisers:
            check_choice("optimisers", o, OPTIMISERS)
        if not isinstance(self.model_args, dict):
            fail("model_args", self.model_args, "a mapping of model overrides")
        check_int("n", self.n)
        check_int("epochs", self.epochs)
        if not isinstance(self.schedule, list) or not all(is_int(e) and e >= 1 for e in self.schedule) or len(
                set(self.schedule)) != len(self.schedule):
            fail("schedule", self.schedule, "a list of distinct positive integers (epoch budgets; may be empty)")
        check_number("low", self.low, 0.0, low_open=True)
        check_number("high", self.high, self.low, low_open=True)
        check_int("seed", self.seed, minimum=0)
        check_number("sgd_lr", self.sgd_lr, 0.0, low_open=True)
        check_number("sgd_wd", self.sgd_wd, 0.0)
        if not isinstance(self.base, TrainConfig):
            fail("base", self.base, "a TrainConfig (the recipe)")
        return self

    def references(self) -> dict[str, dict[str, float]]:
        """Each optimiser's reference (lr, wd): the recipe's for AdamW, ``sgd_lr`` / ``sgd_wd`` for SGD."""
        refs = {"adamw": {"lr": self.base.lr, "wd": self.base.weight_decay},
                "sgd": {"lr": self.sgd_lr, "wd": self.sgd_wd}}
        return {o: refs[o] for o in self.optimisers}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "runs_dir": str(self.runs_dir)}


# ---- (a) defining the runs ---------------------------------------------------------------------------------
def sample_multipliers(n: int, seed: int, low: float = 1 / 8, high: float = 4.0) -> list[tuple[float, float]]:
    """``n`` pairs ``(m_lr, m_wd)``, each factor log-uniform in ``[low, high]``, from ``random.Random(seed)``
    (Mersenne Twister: the same pairs on every platform and Python version)."""
    check_int("n", n)
    check_number("low", low, 0.0, low_open=True)
    check_number("high", high, low, low_open=True)
    rng = random.Random(seed)
    a, b = math.log(low), math.log(high)
    return [(math.exp(rng.uniform(a, b)), math.exp(rng.uniform(a, b))) for _ in range(n)]


@dataclass(frozen=True)
class _Planned:
    role: str  # "sweep" | "schedule"
    model: str
    opt: str
    index: int  # sample index (sweep) or epoch budget (schedule)
    lr_mult: float
    wd_mult: float
    config: TrainConfig


def _plan(spec: StabilitySpec) -> list[_Planned]:
    spec.validate()
    base, refs = spec.base, spec.references()
    mults = sample_multipliers(spec.n, spec.seed, spec.low, spec.high)
    root = Path(spec.runs_dir)

    def config(model: str, opt: str, m_lr: float, m_wd: float, epochs: int, run_dir: Path) -> TrainConfig:
        return dataclasses.replace(
            base, model=model, model_args={**base.model_args, **spec.model_args}, opt=opt,
            lr=refs[opt]["lr"] * m_lr, weight_decay=refs[opt]["wd"] * m_wd,
            momentum=SGD_MOMENTUM if opt == "sgd" else base.momentum, epochs=epochs,
            warmup_epochs=min(base.warmup_epochs, epochs // 2), run_dir=str(run_dir),
            # run control: the analysis prints nothing, and run_local decides resume / overwrite per run
            progress=False, resume=False, overwrite=False)

    out = []
    for model in spec.models:
        for opt in spec.optimisers:
            d = root / model / opt
            out += [_Planned("sweep", model, opt, i, m_lr, m_wd,
                             config(model, opt, m_lr, m_wd, spec.epochs, d / f"sweep-{i:03d}"))
                    for i, (m_lr, m_wd) in enumerate(mults)]
            out += [_Planned("schedule", model, opt, e, 1.0, 1.0,
                             config(model, opt, 1.0, 1.0, e, d / f"epochs-{e:03d}")) for e in spec.schedule]
    for p in out:
        p.config.validate()  # a recipe value that cannot work fails here, before any run starts
    return out


def stability_runs(spec: StabilitySpec) -> list[TrainConfig]:
    """Every run of the study, in a fixed order (per model, per optimiser: the ``n`` sweep runs, then the
    schedule runs), each with its own ``run_dir`` under ``spec.runs_dir``. Pure and deterministic: the same
    spec gives the same list (hence the same :meth:`TrainConfig.hash` values) on any machine."""
    return [p.config for p in _plan(spec)]


# ---- (b) executing them --------------------------------------------------------------------------------------
OnRun = Callable[[int, TrainConfig, RunRecord, bool], None]


def run_local(configs: Sequence[TrainConfig], *, on_run: OnRun | None = None) -> list[RunRecord]:
    """Train ``configs`` one after the other in this process; return their records in the same order.

    Resumable: a run dir whose ``record.json`` belongs to the same experiment (same :meth:`TrainConfig.hash`)
    and says ``completed`` or ``diverged`` is not re-run (both are outcomes; divergence is deterministic for a
    config); an interrupted run continues from its last checkpoint; one that ``failed`` or never checkpointed
    starts over. A run the engine records as ``failed`` (an exception during training) is returned as such and
    the loop goes on; an error before training starts (bad data dir, ...) propagates. Run dirs holding a run
    of another config are refused before anything is trained. ``on_run(index, config, record, reused)`` is
    called after each run (the CLI prints progress with it; this function prints nothing)."""
    for c in configs:
        c.validate()
    plans = [run_plan(c) for c in configs]
    clashes = [str(c.resolved_run_dir()) for c, how in zip(configs, plans, strict=True) if how == "clash"]
    if clashes:
        raise ConfigError(f"run_dir={clashes[0]!r} is invalid: it holds a run of another config ({len(clashes)} "
                          "such run dirs); use another runs dir or remove them")
    records = []
    for i, (cfg, how) in enumerate(zip(configs, plans, strict=True)):
        rec, reused = train_or_resume(cfg, how)
        records.append(rec)
        if on_run is not None:
            on_run(i, cfg, rec, reused)
    return records


# ---- (c) aggregating --------------------------------------------------------------------------------------------
@dataclass
class SweepRun:
    lr: float
    wd: float
    lr_mult: float
    wd_mult: float
    error: float
    status: str
    run_dir: str


@dataclass
class Sweep:
    """The ``n`` sampled runs of one (model, optimiser) and their EDF (see the module docstring)."""

    model: str
    opt: str
    runs: list[SweepRun]
    best_error: float
    median_error: float
    mean_error: float
    failures: int
    edf: list[tuple[float, float]]


@dataclass
class ScheduleRun:
    model: str
    opt: str
    epochs: int
    lr: float
    wd: float
    error: float
    status: str
    run_dir: str


@dataclass
class StabilityRecord(Record):
    """Result of :func:`aggregate_stability`; ``definitions`` states every derived quantity."""

    spec: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    sweeps: list[Sweep] = field(default_factory=list)
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> best / median / area
    schedule: list[ScheduleRun] = field(default_factory=list)

    def sweep(self, model: str, opt: str) -> Sweep:
        for s in self.sweeps:
            if (s.model, s.opt) == (model, opt):
                return s
        raise KeyError(f"no sweep for model={model!r}, opt={opt!r}")


def edf(values: Sequence[float]) -> list[tuple[float, float]]:
    """Points ``(x, F(x))`` of the right-continuous empirical distribution function
    ``F(x) = #{v <= x} / n``, one per distinct value, ascending."""
    s = sorted(values)
    n = len(s)
    return [(v, (i + 1) / n) for i, v in enumerate(s) if i + 1 == n or s[i + 1] != v]


def run_error(record: RunRecord) -> float:
    """``100 - final eval top-1`` of a completed run; :data:`FAILED_ERROR` for a diverged or failed one."""
    top1 = record.final.get("eval_top1") if record.status == "completed" else None
    return FAILED_ERROR if top1 is None else 100.0 - float(top1)


def aggregate_stability(records: Sequence[RunRecord], spec: StabilitySpec, *,
                        figures: bool = True) -> StabilityRecord:
    """The stability record of ``spec`` from the records of its runs (any order; records of other runs are
    ignored). Each planned run is matched by its experiment hash (``record.train_config_hash`` =
    :meth:`TrainConfig.hash`), so a record of an older, different config in the same run dir is never used;
    a planned run without a record is an error naming it. ``figures``: build the matplotlib figures."""
    plan = _plan(spec)
    by_hash = {r.train_config_hash: r for r in records}
    missing = [str(p.config.resolved_run_dir()) for p in plan if p.config.hash() not in by_hash]
    if missing:
        raise ConfigError(f"records={len(records)} records are invalid for this spec: {len(missing)} of its "
                          f"{len(plan)} runs have no record (first: {missing[0]!r}); run them (run_local) first")
    matched = [(p, by_hash[p.config.hash()]) for p in plan]
    sweeps = []
    schedule = []
    for model in spec.models:
        for opt in spec.optimisers:
            runs = [SweepRun(r.config["lr"], r.config["weight_decay"], p.lr_mult, p.wd_mult, run_error(r), r.status,
                             r.run_dir) for p, r in matched if (p.role, p.model, p.opt) == ("sweep", model, opt)]
            errors = [x.error for x in runs]
            best = min(errors)
            sweeps.append(Sweep(model, opt, runs, best, statistics.median(errors), statistics.fmean(errors),
                                sum(x.status != "completed" for x in runs), edf([e - best for e in errors])))
            schedule += [ScheduleRun(model, opt, p.index, r.config["lr"], r.config["weight_decay"], run_error(r),
                                     r.status, r.run_dir)
                         for p, r in matched if (p.role, p.model, p.opt) == ("schedule", model, opt)]
    out = StabilityRecord(
        source={"kind": "stability", "runs_dir": str(spec.runs_dir), "runs": len(plan)},
        spec=spec.to_dict(), references=spec.references(), sweeps=sweeps, schedule=schedule,
        sampling={"distribution": "log-uniform, lr and wd factors independent", "interval": [spec.low, spec.high],
                  "seed": spec.seed, "n": spec.n, "rng": "random.Random(seed).uniform(log low, log high)",
                  "multipliers": [list(m) for m in sample_multipliers(spec.n, spec.seed, spec.low, spec.high)]})
    if set(OPTIMISERS) <= set(spec.optimisers):
        for model in spec.models:
            a, s = out.sweep(model, "adamw"), out.sweep(model, "sgd")
            out.gaps[model] = {"best": s.best_error - a.best_error, "median": s.median_error - a.median_error,
                               "area": s.mean_error - a.mean_error}
    if figures:
        out.figures = _figures(out, spec)
    return out


def stability(spec: StabilitySpec, *, on_run: OnRun | None = None) -> StabilityRecord:
    """Define, run locally (resumably) and aggregate the study of ``spec``; see the module docstring."""
    return aggregate_stability(run_local(stability_runs(spec), on_run=on_run), spec)


# ---- figures ---------------------------------------------------------------------------------------------------
def _figures(rec: StabilityRecord, spec: StabilitySpec) -> dict[str, Any]:
    # Imported here so that `mixerlab` commands that never draw do not pay for matplotlib at start-up.
    from matplotlib.figure import Figure

    figs: dict[str, Any] = {}
    # EDFs: one panel per optimiser, the models (patchify vs conv stem) side by side in each, as Xiao et al.
    fig = Figure(figsize=(5 * len(spec.optimisers), 4), layout="constrained")
    axes = fig.subplots(1, len(spec.optimisers), squeeze=False)[0]
    xmax = max(max(x for x, _ in s.edf) for s in rec.sweeps) or 1.0
    for ax, opt in zip(axes, spec.optimisers, strict=True):
        for model in spec.models:
            pts = rec.sweep(model, opt).edf
            xs, ys = [x for x, _ in pts] + [xmax], [y for _, y in pts] + [1.0]
            ax.step(xs, ys, where="post", label=model)
        ref = rec.references[opt]
        ax.set(title=f"{opt}: lr {ref['lr']:.3g}, wd {ref['wd']:.3g} x [{spec.low:.3g}, {spec.high:.3g}]",
               xlabel="error - best error (pp)", ylabel=f"cumulative fraction of {spec.n} runs", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend()
    figs["edf"] = fig
    if rec.gaps:
        fig = Figure(figsize=(max(4, 1.6 * len(rec.gaps) + 2), 3.5), layout="constrained")
        ax = fig.subplots()
        width = 0.25
        for k, kind in enumerate(("best", "median", "area")):
            ax.bar([i + (k - 1) * width for i in range(len(rec.gaps))], [g[kind] for g in rec.gaps.values()], width,
                   label=kind)
        ax.set_xticks(range(len(rec.gaps)), list(rec.gaps))
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(ylabel="SGD error - AdamW error (pp)", title="AdamW-SGD gap")
        ax.legend()
        figs["gap"] = fig
    if rec.schedule:
        fig = Figure(figsize=(5.5, 4), layout="constrained")
        ax = fig.subplots()
        for m, model in enumerate(spec.models):
            for opt, style in zip(spec.optimisers, ("-", "--"), strict=False):
                pts = sorted((s.epochs, s.error) for s in rec.schedule if (s.model, s.opt) == (model, opt))
                ax.plot([e for e, _ in pts], [err for _, err in pts], style, marker="o", color=f"C{m}",
                        label=f"{model} {opt}")
        ax.set(xscale="log", xlabel="epochs", ylabel="error (%)", title="error vs schedule length (reference lr, wd)")
        ax.set_xticks(spec.schedule, [str(e) for e in spec.schedule])
        ax.grid(alpha=0.3)
        ax.legend()
        figs["schedule"] = fig
    return figs


# ---- CLI --------------------------------------------------------------------------------------------------------
def _configure(p: argparse.ArgumentParser) -> None:
    d = StabilitySpec()
    p.add_argument("--models", nargs="+", default=d.models, help="models to compare (default: ViT_P vs ViT_C 1GF)")
    p.add_argument("--model-arg", dest="model_args", type=parse_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="model override for every model, repeatable (depths=[4])")
    p.add_argument("--optimisers", nargs="+", default=d.optimisers, help=f"any of {list(OPTIMISERS)}")
    p.add_argument("--n", type=int, default=d.n, help="(lr, wd) samples per model and optimiser")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of each sampled run")
    p.add_argument("--schedule", type=int, nargs="*", default=d.schedule,
                   help="epoch budgets of the schedule-length curve (none: no curve)")
    p.add_argument("--interval", type=float, nargs=2, default=[d.low, d.high], metavar=("LOW", "HIGH"),
                   help="multiplier interval of the log-uniform sampling")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the sampling")
    p.add_argument("--sgd-lr", type=float, default=d.sgd_lr, help="SGD reference lr")
    p.add_argument("--sgd-wd", type=float, default=d.sgd_wd, help="SGD reference weight decay")
    p.add_argument("--config", default=None, help="YAML recipe (default: the small-grey recipe)")
    p.add_argument("--set", dest="recipe", type=parse_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, repeatable (data.train_subset=4096, device=cpu, clip_grad=null)")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: <out>/runs, else runs/stability)")


def spec_from_args(args: argparse.Namespace) -> StabilitySpec:
    runs_dir = args.runs_dir or (str(Path(args.out) / "runs") if args.out else "runs/stability")
    return StabilitySpec(runs_dir=runs_dir, models=list(args.models), model_args=dict(args.model_args),
                         optimisers=list(args.optimisers), n=args.n, epochs=args.epochs, schedule=list(args.schedule),
                         low=args.interval[0], high=args.interval[1], seed=args.seed, sgd_lr=args.sgd_lr,
                         sgd_wd=args.sgd_wd, base=TrainConfig.from_sources(args.config, dict(args.recipe)))


def _run(args: argparse.Namespace) -> StabilityRecord:
    spec = spec_from_args(args)
    total = len(stability_runs(spec))

    def progress(i: int, cfg: TrainConfig, rec: RunRecord, reused: bool) -> None:
        print(f"[{i + 1}/{total}] {cfg.model} {cfg.opt} lr={cfg.lr:.3g} wd={cfg.weight_decay:.3g} "
              f"epochs={cfg.epochs}: {rec.status}, error {run_error(rec):.2f}%{' (done before)' if reused else ''}",
              file=sys.stderr)

    return stability(spec, on_run=progress)


def _table(rec: Record) -> str:
    assert isinstance(rec, StabilityRecord)
    s = rec.sampling
    lines = [f"{s['n']} (lr, wd) samples per model and optimiser, log-uniform in "
             f"[{s['interval'][0]:.4g}, {s['interval'][1]:.4g}] x reference (seed {s['seed']}), "
             f"{rec.spec['epochs']} epoch(s) each; error = 100 - final eval top-1 (%), diverged/failed = 100",
             f"{'model':14} {'opt':6} {'ref lr':>8} {'ref wd':>8} {'failed':>7} {'best err':>9} {'median':>8}"]
    for sw in rec.sweeps:
        ref = rec.references[sw.opt]
        lines.append(f"{sw.model:14} {sw.opt:6} {ref['lr']:8.3g} {ref['wd']:8.3g} {sw.failures:>3}/{len(sw.runs):<3} "
                     f"{sw.best_error:9.2f} {sw.median_error:8.2f}")
    if rec.gaps:
        lines += ["", "AdamW-SGD gap (SGD - AdamW, pp): best = best errors, median, area = between the error EDFs",
                  f"{'model':14} {'best':>7} {'median':>7} {'area':>7}"]
        lines += [f"{m:14} {g['best']:7.2f} {g['median']:7.2f} {g['area']:7.2f}" for m, g in rec.gaps.items()]
    if rec.schedule:
        lines += ["", "error (%) vs schedule length at the reference (lr, wd)",
                  f"{'model':14} {'opt':6} " + " ".join(f"{e:>6}" for e in rec.spec["schedule"])]
        for sw in rec.sweeps:
            errs = {r.epochs: r.error for r in rec.schedule if (r.model, r.opt) == (sw.model, sw.opt)}
            lines.append(f"{sw.model:14} {sw.opt:6} " + " ".join(f"{errs[e]:6.2f}" for e in rec.spec["schedule"]))
    return "\n".join(lines)


register(AnalysisCommand(
    name="stability", help="optimisation stability: EDFs over sampled (lr, wd), AdamW-SGD gap, schedule length "
                           "(Xiao et al.)", configure=_configure, run=_run, table=_table, needs_model=False))
