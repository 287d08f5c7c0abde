"""Study specs, the runner (local processes and Ray), the SQLite store, kill / resume and failures."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mixerlab.cli import main
from mixerlab.study import Store, build_study, load_spec, run_study
from mixerlab.study.executors import LocalExecutor
from mixerlab.study.spec import SpecError
from mixerlab.train.metrics import TIMING_KEYS
from mixerlab.zoo import create_model
from tiny_runs import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
# Seconds-long runs: 128 training / 64 eval images of 16x16, one block per stage. The lists are wrapped: a list
# in args is a grid, so a list-valued argument is a list of one list.
TINY = {"depths": [[1, 1, 1, 1]], "dims": [[8, 16, 16, 16]]}
BASE: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "fashion-mnist", "img_size": 16, "in_chans": 1, "train_subset": 128, "eval_subset": 64},
    "recipe": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 1, "deterministic": True,
               "device": "cpu"},
    "models": [{"name": "u_pool_micro", "args": TINY}, {"name": "u_convnext_micro", "args": TINY}],
    "seeds": [0],
}


def spec(**over: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    out.update(copy.deepcopy(over))
    return out


# ---- the spec ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("over", "message"), [
    ({"modles": []}, r"modles=\[\] is invalid: unknown key; allowed keys are"),
    ({"models": ["u_nope_micro"]}, r"models\[0\]\.name='u_nope_micro' is invalid: a registered model"),
    ({"models": {"mixers": [{"name": "u_swin_micro", "args": {"window_size": 0}}]}},
     r"models\.mixers\[0\] with args \{'window_size': 0\}: .*window_size"),
    ({"models": [{"name": "u_swin_micro", "args": {"depths": [2, 2, 6, 2]}}]}, r"write a list-valued argument as a "
                                                                            "list of lists"),
    ({"models": [{"name": "u_swin_micro", "recipe": {"bogus": 1}}]}, r"models\[0\]\.recipe\.bogus=1 is invalid"),
    ({"seeds": [0, 0]}, r"seeds=\[0, 0\] is invalid: a non-empty list of distinct integers"),
    ({"analyses": ["erff"]}, r"analyses\[0\]='erff' is invalid: allowed values are"),
    ({"analyses": [{"erf": {"num_imgs": 2}}]}, r"analyses\[0\]\.erf\.num_imgs=2 is invalid: allowed arguments of erf"),
    ({"mixer_analyses": ["erf"]}, r"mixer_analyses\[0\]='erf' is invalid: allowed values are \['properties'"),
    ({"recipe": {"lr": -1.0}}, r"lr=-1\.0 is invalid"),
    ({"recipe": {"model": "x"}}, r"recipe\.model='x' is invalid: set by the study \(models\)"),
    ({"recipe": "nowhere.yaml"}, r"recipe='nowhere.yaml' is invalid: a recipe YAML file"),
    ({"stability": {"n": 0}}, r"stability\.n=0 is invalid"),
    ({"stability": {"lr": 1}}, r"stability\.lr=1 is invalid: unknown key"),
    ({"convergence": {"target_top1": 120}}, r"convergence\.target_top1=120 is invalid"),
    ({"resources": {"gpus": -1}}, r"resources\.gpus=-1 is invalid"),
    ({"name": "Bad Name"}, r"name='Bad Name' is invalid"),
])
def test_spec_errors_name_the_key_path(over, message):
    with pytest.raises(SpecError, match=message):
        build_study(spec(**over))


def test_an_unknown_profile_lists_the_profiles():
    with pytest.raises(SpecError, match=r"profile='fast' is invalid: allowed values are \['quick'\]"):
        build_study(spec(profiles={"quick": {"recipe": {"epochs": 1}}}), profile="fast")


def test_profiles_merge_mappings_and_replace_lists():
    s = build_study(spec(profiles={"quick": {"recipe": {"epochs": 1}, "seeds": [3]}}), profile="quick")
    assert (s.base.epochs, s.base.batch_size, s.spec["seeds"]) == (1, 32, [3])
    assert [j.seed for j in s.train_jobs] == [3, 3]


def test_grids_expand_and_ids_are_stable_and_deduplicated():
    models = {"mixers": ["u_swin_micro"],
              "activations": [{"name": "u_swin_micro", "args": {"attn_act": ["softmax", "relu"],
                                                                "depths": [[1, 1, 1, 1]]}}],
              "names": [{"name": ["u_pool_micro", "u_identity_micro"]}]}
    s = build_study(spec(models=models, seeds=[0, 1]))
    runs = s.train_jobs
    # u_swin_micro x 2 seeds; (softmax, relu) x depths [1,1,1,1] x 2 seeds; 2 names x 2 seeds
    assert len(runs) == 2 + 4 + 4
    assert {tuple(j.model_args.get("depths", [])) for j in runs if "activations" in j.groups} == {(1, 1, 1, 1)}
    # the same spec, keys in another order: the same ids
    shuffled = spec(models=dict(reversed(list(models.items()))), seeds=[0, 1])
    assert {j.id for j in build_study(shuffled).jobs} == {j.id for j in s.jobs}
    # an explicit default is the same experiment: one job, in both groups
    both = build_study(spec(models={"a": ["u_swin_micro"], "b": [{"name": "u_swin_micro",
                                                                   "args": {"attn_act": "softmax"}}]}))
    (job,) = both.train_jobs
    assert job.groups == ("a", "b")
    # a different recipe or seed is a different experiment
    other = build_study(spec(models=["u_swin_micro"], recipe={**BASE["recipe"], "lr": 1e-3}))
    assert other.train_jobs[0].id != job.id


def test_model_analyses_run_once_per_architecture_and_run_analyses_once_per_run():
    s = build_study(spec(seeds=[0, 1], analyses=["complexity", "bench", "erf"]))
    names = [j.name for j in s.jobs if j.kind == "analysis"]
    assert (names.count("complexity"), names.count("bench"), names.count("erf")) == (2, 2, 4)
    assert all(j.exclusive == (j.name == "bench") for j in s.jobs if j.kind == "analysis")
    assert all(j.after and s.job(j.after[0]).kind == "train" for j in s.jobs if j.kind == "analysis")


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_validate_expand_and_build_every_model(path):
    raw = yaml.safe_load(path.read_text())
    for profile in [None, *(raw.get("profiles") or {})]:
        study = load_spec(path, profile)
        assert study.train_jobs
    seen = set()
    for job in load_spec(path).train_jobs:
        d = job.payload["data"]
        key = (job.model, json.dumps(job.model_args, sort_keys=True), d["img_size"], d["in_chans"])
        if key in seen:
            continue
        seen.add(key)
        net = create_model(job.model, img_size=d["img_size"], in_chans=d["in_chans"], num_classes=10,
                           device="meta", **job.model_args)
        assert sum(p.numel() for p in net.parameters()) > 0


def test_the_default_study_covers_every_mixer():
    from mixerlab.mixers import MIXERS
    from mixerlab.zoo import model_config

    study = load_spec(ROOT / "configs" / "studies" / "default.yaml", "quick")
    used = set()
    for job in study.train_jobs:
        mixer = model_config(job.model, img_size=32, in_chans=1, num_classes=10, **job.model_args).mixer
        used |= {m.name for m in (mixer if isinstance(mixer, list) else [mixer])}
    # dwnet is DWNet's BN-ReLU block form of the depth-wise conv (Swin macro-architecture, dwnet.yaml)
    assert set(MIXERS) - used == {"dwnet"}
    assert {g for j in study.train_jobs for g in j.groups} == {"mixers", "activations", "stability"}


# ---- running -----------------------------------------------------------------------------------------------
def metrics_of(store: Store) -> dict[str, Any]:
    """What a deterministic rerun must reproduce exactly, by model: statuses, per-epoch metrics, final metrics,
    the complexity records; timings left out."""
    runs = {r["model"]: (r["status"], r["eval_top1"],
                         [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in store.epochs(r["id"])])
            for r in store.runs()}
    analyses = {(a["name"], a["model"]): (a["status"], a["record"] if a["name"] == "complexity" else None)
                for a in store.analyses()}
    return {"runs": runs, "analyses": analyses}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of a small study (2 models, complexity + ERF), shared by the tests below."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST absent (make data)")
    out = tmp_path_factory.mktemp("reference")
    s = spec(analyses=["complexity", {"erf": {"num_images": 2}}])
    summary = run_study(build_study(s), out, workers=2, report=False)
    with Store(out, readonly=True) as store:
        return s, out, summary, metrics_of(store)


@needs_fmnist
def test_a_study_runs_records_everything_and_a_rerun_runs_nothing(reference, capsys):
    s, out, summary, _ = reference
    assert summary.ok and summary.ran == 6 and summary.counts == {"completed": 6}
    with Store(out, readonly=True) as store:
        runs = store.runs()
        assert [r["model"] for r in runs] == ["u_pool_micro", "u_convnext_micro"]
        assert all(len(store.epochs(r["id"])) == 2 and r["eval_top1"] is not None for r in runs)
        assert all(r["attempts"] == 1 and r["model_config"]["depths"] == [1, 1, 1, 1] for r in runs)
    again = run_study(build_study(s), out, report=False)
    assert again.ran == 0 and again.ok
    assert main(["study", "export", str(out), "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [{k: r[k] for k in ("model", "seed", "status")} for r in exported["runs"]] == [
        {"model": "u_pool_micro", "seed": 0, "status": "completed"},
        {"model": "u_convnext_micro", "seed": 0, "status": "completed"}]
    assert {"id", "model_args", "eval_top1"} <= set(exported["runs"][0])
    assert main(["study", "export", str(out), "--format", "csv", "--to", str(out / "csv")]) == 0
    assert (out / "csv" / "runs.csv").read_text().count("\n") == 3
    assert main(["study", "status", str(out)]) == 0
    assert "runs: 2 - completed 2" in capsys.readouterr().out


@needs_fmnist
def test_the_ray_executor_gives_the_same_results_on_a_local_cluster(reference, tmp_path):
    pytest.importorskip("ray")
    s, _, _, want = reference
    summary = run_study(build_study(s), tmp_path, executor="ray", report=False)
    assert summary.ok and summary.ran == 6
    with Store(tmp_path, readonly=True) as store:
        assert metrics_of(store) == want


@needs_fmnist
def test_the_ray_executor_joins_an_existing_cluster(reference, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    s, _, _, want = reference
    port = 26379 + os.getpid() % 1000
    # one authentication mode on both sides (Ray >= 2.5x defaults the CLI to tokens, a bare driver not always)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's socket paths must stay short (AF_UNIX limit), so not under pytest's long tmp_path
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    started = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", f"--temp-dir={temp}"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        summary = run_study(build_study(s), tmp_path / "out", executor="ray", address=f"127.0.0.1:{port}",
                            report=False)
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=120)
    assert summary.ok and summary.ran == 6
    with Store(tmp_path / "out", readonly=True) as store:
        assert metrics_of(store) == want


@needs_fmnist
def test_failures_are_recorded_and_the_study_goes_on(tmp_path):
    models = [{"name": "u_pool_micro", "args": TINY, "recipe": {"lr": 1.0e6, "clip_grad": None}},
              {"name": "u_convnext_micro", "args": TINY}]
    s = build_study(spec(models=models, analyses=[{"erf": {"num_images": 2}}, {"invariance": {"shifts": [99]}}]))
    summary = run_study(s, tmp_path, workers=2, report=False)
    assert not summary.ok
    with Store(tmp_path, readonly=True) as store:
        runs = {r["model"]: r for r in store.runs()}
        assert runs["u_pool_micro"]["status"] == "diverged"
        assert runs["u_convnext_micro"]["status"] == "completed"
        an = {(a["model"], a["name"]): a for a in store.analyses()}
        assert an["u_pool_micro", "erf"]["status"] == "skipped"
        assert "diverged" in an["u_pool_micro", "erf"]["error"]
        assert an["u_convnext_micro", "erf"]["status"] == "completed"
        bad = an["u_convnext_micro", "invariance"]
        assert bad["status"] == "failed" and "shift" in bad["error"]


class KillFirst(LocalExecutor):
    """A local executor whose first worker is killed with SIGKILL shortly after it starts."""

    def submit(self, job, threads):
        super().submit(job, threads)
        if not hasattr(self, "victim"):
            self.victim = job.id
            time.sleep(0.5)
            os.kill(self.procs[job.id][0].pid, signal.SIGKILL)


@needs_fmnist
def test_a_worker_that_dies_fails_only_its_own_job_and_is_retried(reference, tmp_path):
    s, _, _, want = reference
    ex = KillFirst(str(tmp_path), 2)
    summary = run_study(build_study(s), tmp_path, report=False, make_executor=lambda: ex)
    with Store(tmp_path, readonly=True) as store:
        rows = {r["id"]: r for r in store.runs()}
        assert rows[ex.victim]["status"] == "failed", rows
        assert "killed by signal 9" in rows[ex.victim]["error"]
        assert sum(r["status"] == "completed" for r in rows.values()) == 1
    assert not summary.ok
    again = run_study(build_study(s), tmp_path, report=False)
    assert again.ok
    with Store(tmp_path, readonly=True) as store:
        assert metrics_of(store) == want
        assert {r["id"]: r["attempts"] for r in store.runs()}[ex.victim] == 2


def _runner(spec_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mixerlab.cli", "study", "run", str(spec_path), "--out", str(out),
                             "--workers", "2", "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _no_workers_left(out: Path, timeout: float = 20.0) -> bool:
    """Every run directory lock is free again: no orphan still trains into the study."""
    import fcntl

    deadline = time.monotonic() + timeout
    locks = list((out / "runs").glob("*.lock")) if (out / "runs").is_dir() else []
    for lock in locks:
        with open(lock) as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.2)
    return True


@needs_fmnist
@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_study(reference, tmp_path):
    s, _, _, want = reference
    # checkpoints every 2 steps so that kills land mid-epoch too (4 steps per epoch)
    s = copy.deepcopy(s)
    s["recipe"]["ckpt_every_steps"] = 2
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(s))
    out = tmp_path / "out"
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        p = _runner(path, out)
        delay = rng.uniform(1.0, 4.0)  # the uninterrupted study takes about 5 s
        try:
            p.wait(delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        assert _no_workers_left(out), "a worker outlived its killed runner"
    p = _runner(path, out)
    assert p.wait(300) == 0, p.stderr.read()
    assert kills >= 1
    with Store(out, readonly=True) as store:
        # ckpt_every_steps changes where checkpoints fall, not the computation: the reference's numbers exactly
        assert metrics_of(store) == want
    db = sqlite3.connect(out / "study.db")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM runs").fetchone() == (2, 2)
    assert db.execute("SELECT COUNT(*) FROM epochs").fetchone() == (4,)


@needs_fmnist
def test_ctrl_c_stops_the_workers_and_the_next_run_resumes(reference, tmp_path):
    s, _, _, want = reference
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(s))
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        p = _runner(path, out)
        deadline = time.monotonic() + 60
        while not list((out / "runs").glob("*/config.yaml")) if (out / "runs").is_dir() else True:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        rc, err = p.wait(60), p.stderr.read()
        if rc == 0 and "interrupted" not in err:
            continue  # the small study finished between its first run starting and the signal: nothing to test
        assert rc == 130, err
        assert "rerun the same command to resume" in err
        break
    else:
        pytest.fail("the study finished before SIGINT in 3 attempts")
    assert _no_workers_left(out, timeout=5)
    p = _runner(path, out)
    assert p.wait(300) == 0
    with Store(out, readonly=True) as store:
        assert metrics_of(store) == want


def test_reading_a_directory_that_holds_no_study_is_a_one_line_error(tmp_path, capsys):
    for argv in (["study", "status", str(tmp_path)], ["report", str(tmp_path)],
                 ["study", "export", str(tmp_path), "--format", "json"]):
        assert main(argv) == 2
        assert f"DIR='{tmp_path}' is invalid: it holds no study.db" in capsys.readouterr().err


def test_a_second_runner_on_the_same_directory_is_refused(tmp_path):
    import fcntl

    from mixerlab.errors import ConfigError

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".runner.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another `mixerlab study run` is working on it"):
            run_study(build_study(spec()), tmp_path, report=False)
