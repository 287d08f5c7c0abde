"""Checkpoints: exact resume after SIGKILL mid-epoch, atomic layout, refusal of corrupt or foreign checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mixerlab.config import ConfigError
from mixerlab.data import DataConfig
from mixerlab.train import CheckpointError, RunDir, TrainConfig, train
from mixerlab.train.checkpoint import rng_state, set_rng_state
from mixerlab.train.metrics import TIMING_KEYS

TINY_ARGS = {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}
ROOT = Path(__file__).resolve().parents[1]


def tiny(run_dir: Path, **kw) -> TrainConfig:
    base = dict(model="u_convnext_micro", model_args=TINY_ARGS, drop_path=0.1, run_dir=str(run_dir),
                data=DataConfig(img_size=16, train_subset=256, eval_subset=128, augment="light"),
                batch_size=16, eval_batch_size=64, epochs=3, warmup_epochs=1, lr=2e-3, deterministic=True,
                ckpt_every_steps=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def cli_args(cfg: TrainConfig) -> list[str]:
    return ["train", "--model", cfg.model, "--model-arg", "depths=[1,1,1,1]", "--model-arg", "dims=[8,16,16,16]",
            "--drop-path", str(cfg.drop_path), "--run-dir", str(cfg.run_dir), "--img-size", "16",
            "--train-subset", "256", "--eval-subset", "128", "--augment", "light", "--batch-size", "16",
            "--eval-batch-size", "64", "--epochs", str(cfg.epochs), "--warmup-epochs", "1", "--lr", "0.002",
            "--deterministic", "--ckpt-every-steps", "3", "--device", "cpu"]


def comparable(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def snapshot(d: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def one_thread():
    # The subprocess runs with OMP_NUM_THREADS=1; float reductions must be split the same way in-process.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed uninterrupted reference run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    record = train(tiny(run_dir))
    torch.set_num_threads(n)
    assert record.status == "completed" and record.epochs_completed == 3
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(finished, tmp_path, one_thread):
    run_dir = tmp_path / "crash"
    cfg = tiny(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mixerlab.cli", *cli_args(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = run_dir / "checkpoints" / "latest.json"
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            if m["epoch"] == 1 and m["pos"] > 0:  # a mid-epoch checkpoint of the second epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = m
                break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    record = train(tiny(run_dir, resume=True))
    assert record.status == "completed"
    assert comparable(run_dir) == comparable(finished)
    ref = json.loads((finished / "record.json").read_text())
    assert {k: v for k, v in record.final.items() if k not in TIMING_KEYS} == \
        {k: v for k, v in ref["final"].items() if k not in TIMING_KEYS}
    assert record.best_top1 == ref["best_top1"]


def test_checkpoint_files(finished):
    ck = finished / "checkpoints"
    m = json.loads((ck / "latest.json").read_text())
    assert m["model"] == "u_convnext_micro" and m["epoch"] == 3 and m["pos"] == 0
    assert sorted(p.name for p in ck.iterdir()) == sorted(["latest.json", m["weights"], m["state"]])
    weights = safetensors.torch.load_file(str(ck / m["weights"]))
    assert any(k.startswith("model.") for k in weights)
    state = torch.load(ck / m["state"], weights_only=True)  # no pickled objects
    assert state["position"]["global_step"] == m["global_step"] == 3 * 16
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(state)
    record = RunDir(finished).record()  # the record and the manifest name the same model by the same hash
    assert (record.model_config, record.model_config_hash) == (m["model_config"], m["model_config_hash"])


def test_rng_state_round_trip():
    import random

    import numpy as np
    s = rng_state(torch.device("cpu"))
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(s, torch.device("cpu"))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_corrupt_checkpoint_refused_and_run_dir_untouched(finished, tmp_path):
    import shutil
    run_dir = tmp_path / "corrupt"
    shutil.copytree(finished, run_dir)
    m = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    wpath = run_dir / "checkpoints" / m["weights"]
    data = bytearray(wpath.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wpath.write_bytes(bytes(data))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(tiny(run_dir, resume=True, epochs=4))
    assert snapshot(run_dir) == before


def test_other_model_checkpoint_refused_and_run_dir_untouched(finished, tmp_path):
    import shutil
    run_dir = tmp_path / "other"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="config hash"):
        train(tiny(run_dir, resume=True, epochs=4, model_args={**TINY_ARGS, "kernel_size": 5}))
    assert snapshot(run_dir) == before


def test_fresh_start_over_existing_run_refused(finished):
    before = snapshot(finished)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny(finished))
    assert snapshot(finished) == before
