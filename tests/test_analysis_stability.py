"""Optimisation stability (SPEC 8.7): EDF and gap maths on synthetic records (exact), reproducible log-uniform
sampling, the pure run definitions, a tiny real sweep with diverging runs, resumption, and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import pytest
import yaml

from mixerlab.analysis import save
from mixerlab.analysis import stability as stab
from mixerlab.analysis.stability import (
    StabilitySpec,
    aggregate_stability,
    edf,
    run_local,
    sample_multipliers,
    stability_runs,
)
from mixerlab.cli import main
from mixerlab.errors import ConfigError
from mixerlab.train import RunDir, RunRecord, TrainConfig, resume
from mixerlab.train.rundir import CONFIG, RECORD

MODELS = ["vit_p_1gf", "vit_c_1gf"]
# Small-grey recipe on 256 / 256 images; no clipping, so that the huge SGD lr of the sweep fixture diverges.
RECIPE = {"data.train_subset": 256, "data.eval_subset": 256, "device": "cpu", "clip_grad": None}


def tiny_spec(runs_dir: Path, **kw) -> StabilitySpec:
    base = dict(runs_dir=str(runs_dir), models=MODELS, model_args={"depths": [1]}, n=2, epochs=1, schedule=[1],
                base=TrainConfig.from_sources(None, RECIPE))
    return StabilitySpec(**{**base, **kw})


def fake_record(cfg: TrainConfig, top1: float | None, status: str = "completed") -> RunRecord:
    """What the engine would record for ``cfg`` (only the fields the aggregation reads)."""
    return RunRecord(status, str(cfg.resolved_run_dir()), cfg.model, final={} if top1 is None else {"eval_top1": top1},
                     config=cfg.to_dict(), train_config_hash=cfg.hash())


def area_between(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """integral (F_a(x) - F_b(x)) dx of two right-continuous step EDFs given by their points."""
    def f(pts, x):
        return max((y for v, y in pts if v <= x), default=0.0)
    xs = sorted({v for v, _ in a} | {v for v, _ in b})
    return sum((f(a, x0) - f(b, x0)) * (x1 - x0) for x0, x1 in itertools.pairwise(xs))


# ---------------------------------------------------------------------------------------------------- maths
def test_edf_points_are_exact():
    assert edf([3.0, 0.0, 1.5, 0.0]) == [(0.0, 0.5), (1.5, 0.75), (3.0, 1.0)]
    assert edf([2.0]) == [(2.0, 1.0)]


def test_sampling_is_reproducible_log_uniform_and_within_the_interval():
    a, b = sample_multipliers(8, seed=0), sample_multipliers(8, seed=0)
    assert a == b and a != sample_multipliers(8, seed=1)
    many = [m for pair in sample_multipliers(4000, seed=3, low=0.125, high=4.0) for m in pair]
    assert all(0.125 <= m <= 4.0 for m in many)
    # log-uniform: each factor-of-2 band of the 5 between 1/8 and 4 holds about a fifth of the draws
    bands = [sum(2.0 ** (k - 3) <= m < 2.0 ** (k - 2) for m in many) / len(many) for k in range(5)]
    assert all(abs(f - 0.2) < 0.03 for f in bands), bands
    with pytest.raises(ConfigError, match=r"high=0.1 is invalid"):
        sample_multipliers(2, seed=0, low=0.125, high=0.1)


def test_aggregation_is_exact_on_synthetic_records(tmp_path):
    spec = tiny_spec(tmp_path, n=4, schedule=[1, 2])
    cfgs = stability_runs(spec)
    # per (model, opt): the 4 sweep top-1 values (None: diverged / failed), then the schedule runs (1, 2 epochs)
    table = {("vit_p_1gf", "adamw"): [80, 78, 70, 60, 70, 75], ("vit_p_1gf", "sgd"): [75, None, 75, None, 50, 60],
             ("vit_c_1gf", "adamw"): [82, 81, 80, 79, 78, 80], ("vit_c_1gf", "sgd"): [81, 81, 80, 70, 77, 79]}
    statuses = {("vit_p_1gf", "sgd", 1): "diverged", ("vit_p_1gf", "sgd", 3): "failed"}
    records = []
    for key, values in table.items():
        mine = [c for c in cfgs if (c.model, c.opt) == key]
        records += [fake_record(c, None if v is None else float(v), statuses.get((*key, i), "completed"))
                    for i, (c, v) in enumerate(zip(mine, values, strict=True))]
    other = fake_record(dataclasses.replace(cfgs[0], lr=1.0), 99.0)  # another experiment: ignored
    rec = aggregate_stability([other, *reversed(records)], spec)

    p_adamw, p_sgd = rec.sweep("vit_p_1gf", "adamw"), rec.sweep("vit_p_1gf", "sgd")
    assert [r.error for r in p_adamw.runs] == [20.0, 22.0, 30.0, 40.0]
    assert (p_adamw.best_error, p_adamw.median_error, p_adamw.failures) == (20.0, 26.0, 0)
    assert p_adamw.edf == [(0.0, 0.25), (2.0, 0.5), (10.0, 0.75), (20.0, 1.0)]
    assert [(r.error, r.status) for r in p_sgd.runs] == [(25.0, "completed"), (100.0, "diverged"),
                                                         (25.0, "completed"), (100.0, "failed")]
    assert (p_sgd.best_error, p_sgd.median_error, p_sgd.failures) == (25.0, 62.5, 2)
    assert p_sgd.edf == [(0.0, 0.5), (75.0, 1.0)]
    assert rec.gaps == {"vit_p_1gf": {"best": 5.0, "median": 36.5, "area": 34.5},
                        "vit_c_1gf": {"best": 1.0, "median": 0.0, "area": 2.5}}
    # 'area' is the signed area between the raw-error EDFs
    for model in MODELS:
        raw = {o: edf([r.error for r in rec.sweep(model, o).runs]) for o in ("adamw", "sgd")}
        assert area_between(raw["adamw"], raw["sgd"]) == pytest.approx(rec.gaps[model]["area"])
    # the sweep's (lr, wd) are the references times the sampled factors
    mults = sample_multipliers(4, spec.seed)
    assert [(r.lr, r.wd) for r in p_sgd.runs] == [(stab.SGD_LR * a, stab.SGD_WD * b) for a, b in mults]
    assert rec.sampling["interval"] == [0.125, 4.0] and rec.sampling["seed"] == 0
    sched = [(s.model, s.opt, s.epochs, s.error) for s in rec.schedule]
    assert sched[:4] == [("vit_p_1gf", "adamw", 1, 30.0), ("vit_p_1gf", "adamw", 2, 25.0),
                         ("vit_p_1gf", "sgd", 1, 50.0), ("vit_p_1gf", "sgd", 2, 40.0)]
    json.dumps(rec.to_dict())
    # figures: one EDF panel per optimiser with the two models side by side in it
    axes = rec.figures["edf"].axes
    assert len(axes) == 2 and all([ln.get_label() for ln in ax.get_lines()] == MODELS for ax in axes)
    assert set(rec.figures) == {"edf", "gap", "schedule"}

    with pytest.raises(ConfigError, match=r"1 of its 24 runs have no record \(first: .*sweep-000"):
        aggregate_stability(records[1:], spec)


# ------------------------------------------------------------------------------------------- defining the runs
def test_runs_are_pure_deterministic_and_each_in_its_own_dir(tmp_path):
    spec = tiny_spec(tmp_path / "runs", n=3, epochs=4, schedule=[1, 2])
    cfgs = stability_runs(spec)
    assert cfgs == stability_runs(spec) and not (tmp_path / "runs").exists()  # nothing written
    assert len(cfgs) == 2 * 2 * (3 + 2)
    dirs = [c.resolved_run_dir() for c in cfgs]
    assert len(set(dirs)) == len(dirs) and all(d.parent.parent.parent == tmp_path / "runs" for d in dirs)
    sgd = [c for c in cfgs if c.opt == "sgd"]
    assert all(c.momentum == 0.9 for c in sgd)
    sweep = [c for c in cfgs if "sweep" in str(c.run_dir)]
    assert {(c.epochs, c.warmup_epochs) for c in sweep} == {(4, 1)}  # recipe warm-up 1, at most half
    assert {c.epochs: c.warmup_epochs for c in cfgs if "epochs-" in str(c.run_dir)} == {1: 0, 2: 1}
    assert all(c.model_args == {"depths": [1]} and c.data.train_subset == 256 for c in cfgs)
    assert sample_multipliers(3, 0) != sample_multipliers(3, 1)
    assert stability_runs(dataclasses.replace(spec, seed=1)) != cfgs


@pytest.mark.parametrize(("change", "message"), [
    ({"models": ["vit_nope"]}, "models='vit_nope' is invalid: allowed values"),
    ({"models": ["vit_p_1gf", "vit_p_1gf"]}, "models=.* distinct"),
    ({"optimisers": ["adam"]}, r"optimisers='adam' is invalid: allowed values are \['adamw', 'sgd'\]"),
    ({"n": 0}, "n=0 is invalid"),
    ({"schedule": [0]}, r"schedule=\[0\] is invalid"),
    ({"low": 2.0, "high": 1.0}, r"high=1.0 is invalid: a number in \(2.0, inf\)"),
    ({"sgd_lr": 0.0}, "sgd_lr=0.0 is invalid"),
    ({"base": TrainConfig(sched="cosinus")}, "sched='cosinus' is invalid"),
])
def test_bad_spec_names_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        stability_runs(tiny_spec(tmp_path, **change))


# ----------------------------------------------------------------------------------------- a tiny real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 models x 2 optimisers x (2 samples + 1 schedule run), 1 epoch on 256 images; SGD's reference lr is
    absurd (1e30), so every SGD run diverges."""
    spec = tiny_spec(tmp_path_factory.mktemp("stability") / "runs", sgd_lr=1e30)
    records = run_local(stability_runs(spec))
    return spec, records


def test_diverged_runs_count_as_failures_and_the_analysis_completes(sweep, tmp_path):
    spec, records = sweep
    rec = aggregate_stability(records, spec)
    for model in MODELS:
        sgd, adamw = rec.sweep(model, "sgd"), rec.sweep(model, "adamw")
        assert [(r.status, r.error) for r in sgd.runs] == [("diverged", 100.0)] * 2 and sgd.failures == 2
        assert sgd.edf == [(0.0, 1.0)]
        assert all(r.status == "completed" and r.error < 100.0 for r in adamw.runs)
        assert rec.gaps[model]["best"] == 100.0 - adamw.best_error
    assert {(s.opt, s.status) for s in rec.schedule} == {("adamw", "completed"), ("sgd", "diverged")}
    paths = save(rec, tmp_path, "stability")
    assert sorted(p.name for p in paths) == ["stability.json", "stability_edf.png", "stability_gap.png",
                                             "stability_schedule.png"]
    assert json.loads(paths[0].read_text())["sampling"]["interval"] == [0.125, 4.0]


def test_completed_runs_are_not_rerun(sweep):
    spec, _ = sweep
    cfgs = stability_runs(spec)
    stamps = {c.run_dir: (Path(c.run_dir) / RECORD).stat().st_mtime_ns for c in cfgs}
    seen = []
    t0 = time.perf_counter()
    again = run_local(cfgs, on_run=lambda i, cfg, rec, reused: seen.append(reused))
    assert time.perf_counter() - t0 < 2.0 and seen == [True] * len(cfgs)
    assert [r.to_dict() for r in again] == [RunDir(c.run_dir).record().to_dict() for c in cfgs]
    assert stamps == {c.run_dir: (Path(c.run_dir) / RECORD).stat().st_mtime_ns for c in cfgs}


def test_cli_reuses_the_runs_and_writes_figures(sweep, tmp_path, capsys):
    spec, _ = sweep
    out = tmp_path / "out"
    argv = ["analyze", "stability", "--models", *MODELS, "--model-arg", "depths=[1]", "--n", "2", "--epochs", "1",
            "--schedule", "1", "--sgd-lr", "1e30", "--runs-dir", spec.runs_dir, "--out", str(out)]
    argv += [a for k, v in RECIPE.items() for a in ("--set", f"{k}={'null' if v is None else v}")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("(done before)") == 12
    assert "AdamW-SGD gap" in captured.out and "vit_c_1gf" in captured.out
    assert {p.name for p in out.iterdir()} == {"stability.json", "stability_edf.png", "stability_gap.png",
                                               "stability_schedule.png"}


# --------------------------------------------------------------------------------- failures and foreign runs
def test_a_failed_run_is_an_outcome_an_error_before_training_is_not(tmp_path, monkeypatch):
    cfg = stability_runs(tiny_spec(tmp_path, models=["vit_p_1gf"], optimisers=["adamw"], n=1, schedule=[]))[0]

    def failing_train(c: TrainConfig) -> RunRecord:  # what the engine does when training raises
        run = RunDir(c.run_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        (run.root / CONFIG).write_text(yaml.safe_dump(c.to_dict()))
        rec = dataclasses.replace(fake_record(c, None, "failed"), error="RuntimeError: boom")
        run.record_path.write_text(json.dumps(rec.to_dict()))
        raise RuntimeError("boom")

    monkeypatch.setattr(resume.engine, "train", failing_train)
    (rec,) = run_local([cfg])
    assert (rec.status, rec.error, stab.run_error(rec)) == ("failed", "RuntimeError: boom", 100.0)

    def broken_setup(c: TrainConfig) -> RunRecord:
        raise FileNotFoundError("no data")

    monkeypatch.setattr(resume.engine, "train", broken_setup)
    with pytest.raises(FileNotFoundError):  # the stale 'failed' record above is not taken for this call's
        run_local([cfg])


def test_a_run_dir_of_another_config_is_refused_before_training(tmp_path, monkeypatch):
    cfgs = stability_runs(tiny_spec(tmp_path, n=1, schedule=[]))
    foreign = fake_record(dataclasses.replace(cfgs[-1], lr=1.0), 50.0)
    Path(cfgs[-1].run_dir).mkdir(parents=True)
    (Path(cfgs[-1].run_dir) / RECORD).write_text(json.dumps(foreign.to_dict()))
    monkeypatch.setattr(resume.engine, "train", lambda c: pytest.fail("trained before refusing"))
    with pytest.raises(ConfigError, match=r"run_dir=.*vit_c_1gf/sgd/sweep-000' is invalid: it holds a run of "
                                          "another config"):
        run_local(cfgs)
