"""The run-directory contract: RunDir reads what the engine writes, one config hash, the per-step log."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mixerlab import create_model
from mixerlab.data import DataConfig
from mixerlab.errors import ConfigError
from mixerlab.train import CheckpointError, RunDir, RunRecord, TrainConfig, train
from mixerlab.train import engine as engine_module
from mixerlab.train.checkpoint import model_hash
from mixerlab.train.cli import main
from mixerlab.train.config import RUN_CONTROL
from mixerlab.train.metrics import TIMING_KEYS
from tiny_runs import tiny as _tiny


def tiny(run_dir: Path, **kw) -> TrainConfig:
    return _tiny(run_dir, eval_subset=64, **kw)


def plain(obj):
    """What a JSON file gives back (tuples become lists)."""
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> tuple[TrainConfig, RunRecord]:
    cfg = tiny(tmp_path_factory.mktemp("rundir") / "run", ema=True, ema_decay=0.9, log_every_steps=4)
    return cfg, train(cfg)


# ---------------------------------------------------------------------------------------------- reading a run
def test_rundir_reads_everything_the_engine_wrote(ema_run):
    cfg, record = ema_run
    run = RunDir(cfg.run_dir)
    assert run.record().to_dict() == plain(record.to_dict())
    assert run.config() == cfg
    metrics = run.metrics()
    assert [r["epoch"] for r in metrics] == [0, 1] and metrics[-1]["eval_top1"] == record.final["eval_top1"]
    # the resolved model config of the built model, and the hash the checkpoint is bound to
    built = create_model(cfg.model, **cfg.model_overrides(10))
    assert run.model_config() == plain(built.config.to_dict()) == record.model_config
    assert record.model_config_hash == run.manifest()["model_config_hash"] == model_hash(cfg.model,
                                                                                          record.model_config)
    assert record.train_config_hash == run.manifest()["train_config_hash"] == cfg.hash()


def test_load_model_gives_the_checkpoint_weights(ema_run):
    cfg, _ = ema_run
    run = RunDir(cfg.run_dir)
    weights = safetensors.torch.load_file(str(run.checkpoint_dir / run.manifest()["weights"]))
    model, ema = run.load_model("model"), run.load_model("ema")
    assert not model.training
    for name, t in model.state_dict().items():
        assert torch.equal(t, weights[f"model.{name}"]), name
    for name, t in ema.state_dict().items():
        assert torch.equal(t, weights[f"ema.{name}"]), name
    x = torch.randn(2, 1, 16, 16)
    assert not torch.equal(model(x), ema(x))


def test_find_accepts_what_eval_accepts(ema_run, capsys):
    cfg, record = ema_run
    root = Path(cfg.run_dir)
    for path in (root, root / "checkpoints", root / "checkpoints" / "latest.json"):
        assert RunDir.find(path).root == root
    # mixerlab eval on the manifest, with the run's data overridden by a flag, evaluates model and EMA
    assert main(["eval", "--checkpoint", str(root / "checkpoints" / "latest.json"), "--eval-subset", "64",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eval_top1"] == record.final["eval_top1"] and out["ema_eval_top1"] == record.final["ema_eval_top1"]


def test_refusals_name_the_path(ema_run, tmp_path):
    cfg, _ = ema_run
    no_ema = tiny(tmp_path / "plain", epochs=1, warmup_epochs=0)
    train(no_ema)
    with pytest.raises(CheckpointError, match=r"which='ema' is invalid for .*plain.*latest\.json.*no ema weights"):
        RunDir(no_ema.run_dir).load_model("ema")
    with pytest.raises(ConfigError, match="which='best' is invalid"):
        RunDir(cfg.run_dir).load_model("best")
    empty = RunDir(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"empty.*latest\.json is missing"):
        empty.load_model()
    with pytest.raises(ConfigError, match=r"empty.*record\.json is missing"):
        empty.record()
    with pytest.raises(ConfigError, match=r"empty.*no config\.yaml"):
        empty.config()


def test_record_from_dict_round_trips_and_is_strict(ema_run):
    _, record = ema_run
    assert RunRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ConfigError, match=r"record keys=\['colour'\] is invalid: allowed keys are"):
        RunRecord.from_dict({**record.to_dict(), "colour": "red"})


def test_foreign_record_file_refused_naming_it(ema_run, tmp_path):
    _, record = ema_run
    (tmp_path / "record.json").write_text(json.dumps({**record.to_dict(), "colour": "red"}))
    with pytest.raises(ConfigError, match=r"record\.json is invalid: record keys=\['colour'\]"):
        RunDir(tmp_path).record()


# ---------------------------------------------------------------------------------------------- one hash
def _changed(value):
    """A different value of the same kind, for any TrainConfig field."""
    if isinstance(value, DataConfig):
        return dataclasses.replace(value, seed=value.seed + 1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 1]
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return 1  # None


def test_train_config_hash_covers_the_experiment_only():
    base = TrainConfig(opt_betas=[0.9, 0.99], data=DataConfig(mean=(0.5,), std=(0.25,)))
    assert TrainConfig.from_dict(plain(base.to_dict())).hash() == base.hash()  # equal as data
    as_tuples = dataclasses.replace(base, opt_betas=(0.9, 0.99), data=DataConfig(mean=[0.5], std=[0.25]))
    assert as_tuples.hash() == base.hash()
    for f in dataclasses.fields(TrainConfig):
        other = dataclasses.replace(base, **{f.name: _changed(getattr(base, f.name))})
        assert (other.hash() == base.hash()) == (f.name in RUN_CONTROL), f.name
    assert "log_every_steps" in RUN_CONTROL and "decay_tables" not in RUN_CONTROL


def test_model_hash_is_canonical_json():
    cfg = create_model("u_convnext_micro", img_size=16, in_chans=1, num_classes=10).config.to_dict()
    assert model_hash("m", cfg) == model_hash("m", plain(cfg))
    assert model_hash("m", cfg) != model_hash("n", cfg)
    with pytest.raises(TypeError):  # no str()/list() fallback that could make two configs collide
        model_hash("m", {**cfg, "odd": {1, 2}})


# ---------------------------------------------------------------------------------------------- steps.jsonl
def test_steps_log_rows(ema_run, tmp_path):
    cfg, _ = ema_run
    steps = RunDir(cfg.run_dir).steps()
    assert [(r["epoch"], r["step"], r["global_step"], r["images_seen"]) for r in steps] == [
        (0, 4, 4, 128), (1, 2, 8, 256), (1, 6, 12, 384)]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in steps)
    off = tiny(tmp_path / "off", epochs=1, warmup_epochs=0)
    train(off)
    assert not RunDir(off.run_dir).steps_path.exists()


def test_diverging_run_logs_its_last_finite_losses(tmp_path):
    rec = train(tiny(tmp_path / "div", lr=1e6, clip_grad=1e9, warmup_epochs=0, log_every_steps=1, drop_path=0.0))
    assert rec.status == "diverged"
    steps = RunDir(tmp_path / "div").steps()
    assert len(steps) == rec.global_step >= 1 and [r["global_step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(math.isfinite(r["loss"]) for r in steps) and steps[-1]["loss"] == rec.last_finite_loss


def test_resume_truncates_steps_after_the_checkpoint(tmp_path, monkeypatch):
    """A crash after step 7 (last checkpoint at step 6) leaves step 7 logged; the resumed run redoes it once."""
    ref = tiny(tmp_path / "ref", log_every_steps=1, ckpt_every_steps=3)
    train(ref)
    cfg = tiny(tmp_path / "crash", log_every_steps=1, ckpt_every_steps=3)
    real_step = engine_module._optimizer_step
    calls = {"n": 0}

    def crash_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash")
        real_step(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_optimizer_step", crash_at_step_8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()
    run = RunDir(cfg.run_dir)
    assert [r["global_step"] for r in run.steps()] == list(range(1, 8)) and run.manifest()["global_step"] == 6
    train(dataclasses.replace(cfg, resume=True))
    assert run.steps() == RunDir(ref.run_dir).steps()
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in run.metrics()]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in RunDir(ref.run_dir).metrics()]
