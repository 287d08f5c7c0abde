"""Convergence analysis (SPEC 8.8): exact epochs / seconds to a target on known curves, never-reached runs,
the default target, one curve per run, and the CLI on a run the real engine wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixerlab.analysis import save
from mixerlab.analysis.convergence import TARGET_DEFAULT, convergence
from mixerlab.cli import main
from mixerlab.data import DataConfig
from mixerlab.errors import ConfigError
from mixerlab.train import RunRecord, TrainConfig, train
from mixerlab.train.rundir import CONFIG, METRICS, RECORD


def fake_run(root: Path, attn_act: str, top1: list[float | None], epoch_s: list[float],
             status: str | None = "completed") -> Path:
    """A run dir as the engine lays it out (file names from mixerlab.train.rundir); ``None`` top-1: an epoch
    without evaluation; ``status=None``: no record yet (a run still going)."""
    cfg = TrainConfig(model="u_swin_micro", model_args={"attn_act": attn_act}, run_dir=str(root))
    root.mkdir(parents=True)
    (root / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rows = [{"epoch": k, "step": k + 1, "train_loss": 1.0, "lr": 1e-3, "epoch_s": s,
             **({} if t is None else {"eval_top1": t, "eval_top5": 99.0, "eval_loss": 0.5})}
            for k, (t, s) in enumerate(zip(top1, epoch_s, strict=True))]
    (root / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        (root / RECORD).write_text(json.dumps(RunRecord(status, str(root), cfg.model, epochs=len(rows),
                                                        config=cfg.to_dict()).to_dict()))
    return root


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [fake_run(tmp_path / "softmax", "softmax", [50.0, 70.0, 85.0, 90.0], [10.0, 10.0, 10.0, 10.0]),
            fake_run(tmp_path / "relu", "relu", [40.0, 60.0, 75.0, 79.0], [5.0, 5.0, 5.0, 5.0])]


def test_epochs_and_seconds_to_target_are_exact(two_runs):
    rec = convergence(two_runs, target_top1=80.0, figures=False)
    soft, relu = rec.runs
    assert (rec.target_top1, rec.target_source) == (80.0, "given")
    assert soft.label == "u_swin_micro attn_act=softmax" and relu.label == "u_swin_micro attn_act=relu"
    assert soft.epochs == [1, 2, 3, 4] and soft.error == [50.0, 30.0, 15.0, 10.0]
    assert soft.seconds == [10.0, 20.0, 30.0, 40.0]
    assert (soft.epochs_to_target, soft.seconds_to_target) == (3, 30.0)
    assert (soft.best_top1, soft.final_top1, soft.status) == (90.0, 90.0, "completed")
    # never reached: None, not the last epoch
    assert (relu.epochs_to_target, relu.seconds_to_target) == (None, None)
    json.dumps(rec.to_dict())  # JSON-serialisable


def test_default_target_is_what_every_run_reaches(two_runs):
    rec = convergence(two_runs, figures=False)
    assert (rec.target_top1, rec.target_source) == (79.0, TARGET_DEFAULT)
    assert [(r.epochs_to_target, r.seconds_to_target) for r in rec.runs] == [(3, 30.0), (4, 20.0)]


def test_unevaluated_epochs_add_time_and_running_runs_count(tmp_path):
    run = fake_run(tmp_path / "sparse", "layernorm", [None, 60.0, None, 82.0], [10.0, 12.0, 10.0, 12.0],
                   status=None)
    r = convergence([run], target_top1=80.0, figures=False).runs[0]
    assert (r.epochs, r.seconds, r.epochs_trained, r.status) == ([2, 4], [22.0, 44.0], 4, "running")
    assert (r.epochs_to_target, r.seconds_to_target) == (4, 44.0)


def test_figure_has_one_curve_per_run(two_runs, tmp_path):
    rec = convergence(two_runs, target_top1=80.0)
    fig = rec.figures["curves"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == [r.label for r in rec.runs]
    paths = save(rec, tmp_path / "out", "convergence")
    assert [p.name for p in paths] == ["convergence.json", "convergence_curves.png"]


def test_equal_labels_get_the_run_dir_name(tmp_path):
    runs = [fake_run(tmp_path / f"seed{i}", "relu", [50.0], [1.0]) for i in range(2)]
    assert [r.label for r in convergence(runs, figures=False).runs] == [
        "u_swin_micro attn_act=relu (seed0)", "u_swin_micro attn_act=relu (seed1)"]


@pytest.mark.parametrize(("make", "target", "message"), [
    (lambda d: [], None, r"run_dirs=\[\] is invalid"),
    (lambda d: str(d / "a"), None, "run_dirs="),
    (lambda d: [d / "a", d / "nowhere"], None, r"run_dirs\[1\]=.*nowhere.* no config.yaml"),
    (lambda d: [d / "a"], 0.0, r"target_top1=0.0 is invalid: a number in \(0.0, 100.0\]"),
    (lambda d: [d / "a"], 101.0, "target_top1=101.0 is invalid"),
])
def test_bad_input_names_the_field(tmp_path, make, target, message):
    fake_run(tmp_path / "a", "relu", [50.0], [1.0])
    with pytest.raises(ConfigError, match=message):
        convergence(make(tmp_path), target)


def test_no_evaluated_epoch_needs_a_target(tmp_path):
    run = fake_run(tmp_path / "diverged", "softmax", [], [], status="diverged")
    with pytest.raises(ConfigError, match="target_top1=None is invalid here"):
        convergence([run])
    r = convergence([run], 50.0, figures=False).runs[0]
    assert (r.status, r.epochs, r.epochs_to_target) == ("diverged", [], None)


def test_cli_on_a_run_of_the_real_engine(tmp_path, capsys):
    cfg = TrainConfig(model="u_convnext_micro", model_args={"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]},
                      data=DataConfig(img_size=16, train_subset=128, eval_subset=64, augment="none"),
                      batch_size=32, epochs=1, warmup_epochs=0, device="cpu", progress=False,
                      run_dir=str(tmp_path / "run"))
    record = train(cfg)
    out = tmp_path / "analysis"
    assert main(["analyze", "convergence", "--runs", cfg.run_dir, "--target", "1", "--out", str(out),
                 "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)["runs"][0]
    assert got["epochs"] == [1] and got["top1"] == [record.final["eval_top1"]]
    assert got["seconds"] == [record.epoch_times[0]] and got["epochs_to_target"] == 1
    assert (out / "convergence_curves.png").stat().st_size > 0
    assert main(["analyze", "convergence", "--runs", cfg.run_dir]) == 0
    assert "u_convnext_micro depths=[1, 1, 1, 1] dims=[8, 16, 16, 16]" in capsys.readouterr().out
