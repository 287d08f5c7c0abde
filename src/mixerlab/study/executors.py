"""Where jobs execute: local worker processes, or tasks on a Ray cluster. Both run
:func:`mixerlab.study.worker.execute` and hand its result back to the runner, which alone writes the store.

* :class:`LocalExecutor`: one fresh process per job, forked from a forkserver that has already imported torch
  and mixerlab (so a job starts in well under a second and inherits no threads or CUDA state). A job that dies
  (killed, out of memory, segfault) is reported as failed with its exit code and takes no other job with it;
  a worker whose runner disappears exits by itself (it watches its pipe to the runner), so a killed runner
  leaves no orphan training into a run directory that the next runner will resume.
* :class:`RayExecutor`: each job is a Ray task asking for the spec's ``resources`` (CPUs / GPUs), on the cluster
  at ``address`` or on a local one. Run directories are written by the task wherever it runs, so on a
  multi-node cluster the study directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from ..errors import ConfigError
from .spec import Job

Result = dict[str, Any]


class Executor(Protocol):
    capacity: int  # jobs in flight at once

    def submit(self, job: Job, threads: int) -> None: ...
    def wait(self, timeout: float) -> list[tuple[str, Result]]: ...
    def running(self) -> int: ...
    def stop(self) -> None: ...


def cores() -> int:
    """CPUs this process may use (the affinity mask: a cluster scheduler's allocation, not the node's size)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _child(conn: Connection, job: dict[str, Any], study_dir: str, threads: int) -> None:
    # Ctrl-C reaches the whole process group: the runner handles it and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:  # the runner never sends: poll() returns when its end closes (runner gone or stopping)
        try:
            conn.poll(None)
        except (EOFError, OSError):
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    from .worker import execute

    result = execute(job, study_dir, threads)
    conn.send(result)


class LocalExecutor:
    def __init__(self, study_dir: str, workers: int) -> None:
        self.study_dir = study_dir
        self.capacity = workers
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["mixerlab.study.worker"])
        self.procs: dict[str, tuple[Any, Connection]] = {}

    def submit(self, job: Job, threads: int) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_child, args=(child, job.to_dict(), self.study_dir, threads),
                             name=f"mixerlab-{job.id}")
        p.start()
        child.close()
        self.procs[job.id] = (p, parent)

    def running(self) -> int:
        return len(self.procs)

    def wait(self, timeout: float) -> list[tuple[str, Result]]:
        if not self.procs:
            return []
        handles = {}
        for job_id, (p, conn) in self.procs.items():
            handles[conn] = job_id
            handles[p.sentinel] = job_id
        done = []
        for job_id in dict.fromkeys(handles[h] for h in wait(list(handles), timeout)):
            p, conn = self.procs[job_id]
            result = None
            if conn.poll():
                try:
                    result = conn.recv()
                except (EOFError, OSError):
                    result = None
            if result is None and p.is_alive():
                continue  # readable without data: EOF is racing the exit; the sentinel follows
            p.join()
            conn.close()
            del self.procs[job_id]
            if result is None:
                code = p.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                result = {"status": "failed", "error": f"worker process died ({how}) before returning a result"}
            done.append((job_id, result))
        return done

    def stop(self) -> None:
        for p, conn in self.procs.values():
            conn.close()  # the worker's watcher exits at once
            p.terminate()
        for p, _ in self.procs.values():
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        self.procs.clear()


def _ray_task(job: dict[str, Any], study_dir: str, threads: int) -> Result:
    from .worker import execute

    return execute(job, study_dir, threads)


class RayExecutor:
    def __init__(self, study_dir: str, *, address: str | None, cpus: float, gpus: float,
                 workers: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("executor='ray' is invalid here: Ray is not installed (pip install 'mixerlab[ray]'), "
                              "or use --executor local") from None
        self.ray = ray
        if not ray.is_initialized():
            # address None: start a local cluster sized to this machine; "auto" or host:port: join one.
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus)))}})
        self.study_dir = study_dir
        self.cpus, self.gpus = cpus, gpus
        total = int(ray.cluster_resources().get("CPU", 1) // max(cpus, 1e-9))
        self.capacity = workers or max(1, total)
        self.task = ray.remote(_ray_task)
        self.refs: dict[Any, str] = {}

    def submit(self, job: Job, threads: int) -> None:
        cpus = max(self.cpus, threads) if job.exclusive else self.cpus
        ref = self.task.options(num_cpus=cpus, num_gpus=self.gpus, max_retries=0, name=job.id).remote(
            job.to_dict(), self.study_dir, threads)
        self.refs[ref] = job.id

    def running(self) -> int:
        return len(self.refs)

    def wait(self, timeout: float) -> list[tuple[str, Result]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            job_id = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as e:  # the task's worker crashed or the node went away
                result = {"status": "failed", "error": f"Ray task failed: {type(e).__name__}: {e}"}
            done.append((job_id, result))
        return done

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        self.ray.shutdown()
