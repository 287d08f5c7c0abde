"""The study runner: expand a spec, run what is not yet done, record every outcome, write the report.

``run_study(study, out)`` is idempotent: jobs already ``completed`` or ``diverged`` in ``<out>/study.db`` are
skipped, a training run interrupted mid-way resumes from its last checkpoint (the worker finds it in its run
directory), and failed or skipped jobs are tried again; so rerunning the same command after any interruption
(Ctrl-C, SIGKILL, a crashed node) finishes the study with nothing lost and nothing run twice.

Scheduling: a job starts when the jobs it depends on (``Job.after``) have completed; one whose prerequisite
diverged, failed or was skipped is recorded as ``skipped``, naming it. ``exclusive`` jobs (timing
measurements) run one at a time with nothing else running and with every core. The other jobs share the
machine: ``workers`` at a time, each with ``cores // workers`` torch threads.

After the jobs, the runner derives the study-level records that need only other records (convergence per
group, the stability sweep's EDFs and gaps) and writes the report.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from ..errors import ConfigError, check_choice, check_int
from ..train.checkpoint import atomic_write
from .executors import Executor, LocalExecutor, RayExecutor, cores
from .spec import Job, Study, resources
from .store import DONE, Store
from .worker import run_dir

EXECUTORS = ("local", "ray")
SPEC_COPY = "spec.yaml"
LOCK = ".runner.lock"


@dataclass
class Summary:
    """What one invocation did: counts by final status over the spec's jobs, and the report's paths."""

    counts: dict[str, int] = field(default_factory=dict)
    ran: int = 0
    wall_s: float = 0.0
    report: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and set(self.counts) <= set(DONE)


class Progress:
    """``done / running / failed`` and an ETA: a live line on a terminal, one line per finished job otherwise."""

    def __init__(self, total: int, done: int, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.t0 = time.monotonic()
        self.finished_here = 0

    def line(self) -> str:
        left = self.total - self.done
        eta = ""
        if self.finished_here and left:
            rate = (time.monotonic() - self.t0) / self.finished_here
            eta = f" · ~{_hms(rate * left)} left"
        return (f"[{self.done}/{self.total} done · {self.running} running · {self.failed} failed{eta}]")

    def update(self, running: int) -> None:
        self.running = running
        if self.live:
            self.stream.write("\r" + self.line().ljust(78))
            self.stream.flush()

    def finished(self, job: Job, result: dict[str, Any]) -> None:
        self.done += 1
        self.finished_here += 1
        self.running = max(0, self.running - (result["status"] != "skipped"))
        self.failed += result["status"] in ("failed", "skipped")
        what = job.label
        top1 = (result.get("record") or {}).get("final", {}).get("eval_top1") if job.kind == "train" else None
        tail = f" top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else ""
        err = f": {result.get('error')}" if result["status"] in ("failed", "skipped") else ""
        msg = f"{result['status']:<9} {what} ({result.get('wall_s') or 0:.0f} s){tail}{err}"
        if self.live:
            self.stream.write("\r" + " " * 78 + "\r")
        self.stream.write(msg + (" " + self.line() if not self.live else "") + "\n")
        self.stream.flush()


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_study(study: Study, out: str | Path, *, executor: str = "local", workers: int | None = None,
              address: str | None = None, report: bool = True, stream: TextIO | None = None,
              make_executor: Callable[[], Executor] | None = None) -> Summary:
    """Run ``study`` into ``out`` (see the module docstring). ``workers``: jobs at once (default: local, one per
    core; Ray, as many as the cluster's CPUs allow). ``address``: the Ray cluster (None: start a local one)."""
    check_choice("executor", executor, EXECUTORS)
    if workers is not None:
        check_int("workers", workers)
    if address is not None and executor != "ray":
        raise ConfigError(f"address={address!r} is invalid with executor={executor!r}: it names a Ray cluster")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"out={str(out)!r} is invalid: another `mixerlab study run` is working on it") from None
    t0 = time.monotonic()
    summary = Summary()
    store = Store(out)
    ex: Executor | None = None
    try:
        atomic_write(out / SPEC_COPY, lambda f: f.write(yaml.safe_dump(study.spec, sort_keys=False).encode()))
        store.sync(study)
        # Jobs not done are run again, so their old failed / skipped status must not skip their dependents.
        status = {j.id: s if (s := store.status_of(j)) in DONE else None for j in study.jobs}
        todo = [j for j in study.jobs if status[j.id] is None]
        n_cores = cores()
        if make_executor is not None:
            ex = make_executor()
        elif executor == "local":
            ex = LocalExecutor(str(out), workers or n_cores)
        else:
            res = resources(study)
            ex = RayExecutor(str(out), address=address, cpus=res["cpus"], gpus=res["gpus"], workers=workers)
        threads = max(1, n_cores // ex.capacity) if executor == "local" else max(1, int(resources(study)["cpus"]))
        progress = Progress(len(study.jobs), len(study.jobs) - len(todo), stream)
        summary.ran = _loop(todo, status, store, ex, threads, n_cores, progress)
        _derive(study, store, out)
        if report:
            from ..report import write_report

            summary.report = [str(p) for p in write_report(out)]
    except KeyboardInterrupt:
        summary.interrupted = True
        if ex is not None:
            ex.stop()
            ex = None
        (stream or sys.stderr).write("\ninterrupted: finished jobs are recorded; rerun the same command to resume\n")
    finally:
        if ex is not None:
            ex.stop()
        counts: dict[str, int] = {}
        for table in store.counts().values():
            for k, v in table.items():
                counts[k] = counts.get(k, 0) + v
        summary.counts = counts
        store.close()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    summary.wall_s = time.monotonic() - t0
    return summary


def _loop(todo: list[Job], status: dict[str, str | None], store: Store, ex: Executor, threads: int,
          n_cores: int, progress: Progress) -> int:
    pending = list(todo)
    jobs = {j.id: j for j in todo}
    exclusive_running = False
    ran = 0
    while pending or ex.running():
        for j in [j for j in pending if any(status.get(d) in ("failed", "diverged", "skipped") for d in j.after)]:
            bad = next(d for d in j.after if status.get(d) in ("failed", "diverged", "skipped"))
            result = {"status": "skipped", "error": f"needs run {bad}, which {status[bad]}"}
            pending.remove(j)
            store.start(j)
            store.finish(j, result)
            status[j.id] = "skipped"
            progress.finished(j, result)
        ready = [j for j in pending if all(status.get(d) == "completed" for d in j.after)]
        shared = [j for j in ready if not j.exclusive]
        while shared and not exclusive_running and ex.running() < ex.capacity:
            j = shared.pop(0)
            _start(j, store, ex, threads, pending, status)
        if not ex.running() and not shared:
            alone = [j for j in ready if j.exclusive]
            if alone:
                _start(alone[0], store, ex, n_cores, pending, status)
                exclusive_running = True
        if not ex.running():
            if pending:  # nothing runs and nothing can start: a dependency outside the job list
                raise RuntimeError(f"jobs {[j.id for j in pending]} wait on jobs that never run")
            break
        progress.update(ex.running())
        for job_id, result in ex.wait(timeout=1.0):
            job = jobs[job_id]
            store.finish(job, result)
            status[job_id] = result["status"]
            exclusive_running = exclusive_running and not job.exclusive
            ran += 1
            progress.finished(job, result)
    return ran


def _start(job: Job, store: Store, ex: Executor, threads: int, pending: list[Job],
           status: dict[str, str | None]) -> None:
    store.start(job)
    ex.submit(job, threads)
    pending.remove(job)
    status[job.id] = "running"


def _derive(study: Study, store: Store, out: Path) -> None:
    """Study-level records computed from other records: convergence per group, the stability aggregate."""
    from ..analysis.convergence import convergence
    from ..analysis.stability import aggregate_stability
    from ..train import RunRecord

    runs = store.runs()
    target = (study.spec.get("convergence") or {}).get("target_top1")
    if "convergence" in study.spec:
        for group in dict.fromkeys(g for r in runs for g in r["groups"] if g != "stability"):
            dirs = [run_dir(out, r["id"]) for r in runs if group in r["groups"] and r["status"] == "completed"]
            args = {"group": group, "target_top1": target}
            job_id = "d-convergence-" + group
            if dirs:
                rec = convergence(dirs, target, figures=False).to_dict()
                store.put_derived(job_id, "convergence", args, rec)
    spec = study.stability
    if spec is not None:
        rows = [r for r in runs if "stability" in r["groups"]]
        records = [RunRecord.from_dict(r["record"]) for r in rows if r["record"]]
        args = {"spec": json.loads(json.dumps(dataclasses.asdict(spec), default=str))}
        if len(records) == len(rows):
            rec = aggregate_stability(records, spec, figures=False).to_dict()
            store.put_derived("d-stability", "stability", args, rec)
        else:
            store.put_derived("d-stability", "stability", args, None, "skipped",
                              f"{len(rows) - len(records)} of {len(rows)} stability runs have no record")
