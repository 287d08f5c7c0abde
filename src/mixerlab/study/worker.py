"""Execute one study job (a plain dict, :meth:`Job.to_dict`) and return its result as a plain dict.

The same function runs in a local worker process and in a Ray task. It never touches the study database: the
runner records what it returns. Files it writes (the run directory of a training job) are atomic, so a worker
killed at any instant leaves a run that the next attempt resumes from its last checkpoint.

Result: ``{"status", "error", "wall_s", "host", "record", ...}``; a training job adds ``epochs`` (its
metrics.jsonl rows) and ``run_dir``. An exception becomes ``status: failed`` with the error and traceback.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..train import RunDir, TrainConfig
from ..train.resume import train_or_resume
from .spec import analysis_function

RUNS = "runs"
# How long a job waits for a run directory held by another process (an orphan of a killed runner that has
# not yet noticed): its watcher exits within a second, so this is generous.
LOCK_WAIT_S = 60.0


def run_dir(study_dir: str | Path, run_id: str) -> Path:
    return Path(study_dir) / RUNS / run_id


def execute(job: dict[str, Any], study_dir: str, threads: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        result = _train(job, study_dir) if job["kind"] == "train" else _analysis(job, study_dir)
    except Exception as e:
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    result.update(wall_s=time.perf_counter() - t0, host=socket.gethostname(), pid=os.getpid(),
                  threads=torch.get_num_threads())
    return result


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a ``.lock`` file beside the run dir) while training into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path.with_suffix('')} is being trained by another process (lock held "
                                       f"for {LOCK_WAIT_S:.0f} s); is another runner working on this study?") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train(job: dict[str, Any], study_dir: str) -> dict[str, Any]:
    root = run_dir(study_dir, job["id"])
    cfg = TrainConfig.from_dict({**job["payload"], "run_dir": str(root)})
    with _locked(root.with_name(root.name + ".lock")):
        rec, reused = train_or_resume(cfg)
    return {"status": rec.status, "error": rec.error, "record": rec.to_dict(), "epochs": RunDir(root).metrics(),
            "run_dir": str(root), "reused": reused}


def _analysis(job: dict[str, Any], study_dir: str) -> dict[str, Any]:
    name, args, run = job["name"], dict(job["payload"]["args"]), job["payload"]["run"]
    fn = analysis_function(name)
    if run is None:  # mixers built alone
        record = fn(**args)
    else:
        rd = RunDir(run_dir(study_dir, run))
        if name == "complexity":
            cfg = rd.config()
            c = fn(ModelConfig.from_dict(rd.model_config()), input_size=(cfg.data.in_chans, cfg.data.img_size,
                                                                        cfg.data.img_size), **args)
            return {"status": "completed", "record": {
                "model": job["model"], "input_size": list(c.input_size), "params": c.params, "macs": c.macs,
                "activations": c.activations, "params_m": c.params_m, "gmacs": c.gmacs, "gflops": c.gflops}}
        if name == "bench":
            args.setdefault("threads", torch.get_num_threads())
        record = fn(rd.root, **args)
    for fig in getattr(record, "figures", {}).values():  # the report draws its own figures from the records
        import matplotlib.pyplot as plt

        plt.close(fig)
    return {"status": "completed", "record": record.to_dict()}
