"""The results store: one SQLite database per study directory (``<DIR>/study.db``), in WAL mode.

Only the runner process writes it, each change in one transaction (workers return their results as plain
records; they never open the database), so a runner killed at any instant leaves the database at the last
committed change: a job is either recorded with its outcome or not at all. Readers (``mixerlab study status``,
the report, exports) open it read-only and may run while the runner writes.

Tables::

    meta(key, value)                 the study's name, profile and resolved spec (JSON)
    runs(id, ...)                    one row per training job: groups, model, model_args, seed, the TrainConfig
                                     (config), the resolved model config, status, error, attempts, timings,
                                     final metrics, the RunRecord (record) and in_spec (1: in the current spec)
    epochs(run_id, epoch, metrics)   the run's metrics.jsonl rows
    analyses(id, ...)                one row per analysis job: name, run_id (the run it measured, or NULL),
                                     args, status, error, timings, and its record (``Record.to_dict()``)

Statuses: ``pending``, ``running``, ``completed``, ``diverged``, ``failed``, ``skipped`` (a job whose
prerequisite did not complete; the error names it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..train.resume import FINAL
from .spec import Job, Study

DB = "study.db"
STATUSES = ("pending", "running", "completed", "diverged", "failed", "skipped")
DONE = FINAL  # the outcomes a rerun keeps (the rule of train.resume); failed and skipped jobs are tried again

_COMMON = """id TEXT PRIMARY KEY, groups TEXT NOT NULL, model TEXT, model_args TEXT NOT NULL, seed INTEGER,
    status TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL,
    wall_s REAL, host TEXT, in_spec INTEGER NOT NULL DEFAULT 1, position INTEGER NOT NULL DEFAULT 0"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs ({_COMMON}, config TEXT NOT NULL, model_config TEXT, run_dir TEXT,
    eval_top1 REAL, best_top1 REAL, final TEXT, record TEXT);
CREATE TABLE IF NOT EXISTS epochs (run_id TEXT NOT NULL REFERENCES runs(id), epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS analyses ({_COMMON}, name TEXT NOT NULL, run_id TEXT, args TEXT NOT NULL,
    exclusive INTEGER NOT NULL DEFAULT 0, record TEXT);
"""
JSON_COLUMNS = ("groups", "model_args", "config", "model_config", "final", "record", "args", "metrics")


class Store:
    """The study database at ``<directory>/study.db``; ``readonly`` for readers (it must exist then)."""

    def __init__(self, directory: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(directory) / DB
        if readonly:
            if not self.path.is_file():
                raise ConfigError(f"DIR={str(directory)!r} is invalid: it holds no {DB}, so it is not a study "
                                  "directory (run `mixerlab study run SPEC --out DIR` first)")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a killed process
            self.db.executescript(SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- writing (the runner only) ---------------------------------------------------------------------------
    def sync(self, study: Study) -> None:
        """Make the store describe ``study``: insert its new jobs as pending, mark which rows belong to the spec,
        and return jobs left ``running`` by a runner that died to ``pending``."""
        with self.transaction() as db:
            for key, value in (("name", study.name), ("profile", study.profile), ("description", study.description),
                               ("spec", study.spec), ("synced_at", time.time())):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            db.execute("UPDATE runs SET in_spec = 0")
            db.execute("UPDATE analyses SET in_spec = 0")
            for pos, job in enumerate(study.jobs):
                common = (job.id, json.dumps(list(job.groups)), job.model, json.dumps(job.model_args), job.seed)
                if job.kind == "train":
                    db.execute("INSERT OR IGNORE INTO runs (id, groups, model, model_args, seed, status, config) "
                               "VALUES (?, ?, ?, ?, ?, 'pending', ?)", (*common, json.dumps(job.payload)))
                    db.execute("UPDATE runs SET in_spec = 1, groups = ?, position = ? WHERE id = ?",
                               (json.dumps(list(job.groups)), pos, job.id))
                else:
                    db.execute("INSERT OR IGNORE INTO analyses (id, groups, model, model_args, seed, status, name, "
                               "run_id, args, exclusive) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                               (*common, job.name, job.payload.get("run"), json.dumps(job.payload["args"]),
                                int(job.exclusive)))
                    db.execute("UPDATE analyses SET in_spec = 1, groups = ?, position = ? WHERE id = ?",
                               (json.dumps(list(job.groups)), pos, job.id))
            for table in ("runs", "analyses"):
                db.execute(f"UPDATE {table} SET status = 'pending' WHERE status = 'running'")

    def start(self, job: Job) -> None:
        with self.transaction() as db:
            db.execute(f"UPDATE {_table(job)} SET status = 'running', started_at = ?, host = NULL, "
                       "attempts = attempts + 1, error = NULL WHERE id = ?", (time.time(), job.id))

    def finish(self, job: Job, result: dict[str, Any]) -> None:
        """Record a job's outcome (``result`` from :func:`mixerlab.study.worker.execute`) in one transaction."""
        status = result["status"]
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is invalid: one of {STATUSES}")
        now = time.time()
        with self.transaction() as db:
            if job.kind == "train":
                rec = result.get("record") or {}
                final = rec.get("final") or {}
                db.execute("UPDATE runs SET status = ?, error = ?, finished_at = ?, wall_s = ?, host = ?, "
                           "model_config = ?, run_dir = ?, eval_top1 = ?, best_top1 = ?, final = ?, record = ? "
                           "WHERE id = ?",
                           (status, result.get("error"), now, result.get("wall_s"), result.get("host"),
                            json.dumps(rec.get("model_config")) if rec else None, result.get("run_dir"),
                            final.get("eval_top1"), rec.get("best_top1"), json.dumps(final),
                            json.dumps(rec) if rec else None, job.id))
                db.execute("DELETE FROM epochs WHERE run_id = ?", (job.id,))
                db.executemany("INSERT INTO epochs VALUES (?, ?, ?)",
                               [(job.id, int(m["epoch"]), json.dumps(m)) for m in result.get("epochs") or []])
            else:
                db.execute("UPDATE analyses SET status = ?, error = ?, finished_at = ?, wall_s = ?, host = ?, "
                           "record = ? WHERE id = ?",
                           (status, result.get("error"), now, result.get("wall_s"), result.get("host"),
                            json.dumps(result["record"]) if result.get("record") else None, job.id))

    def put_derived(self, job_id: str, name: str, args: dict[str, Any], record: dict[str, Any] | None,
                    status: str = "completed", error: str | None = None) -> None:
        """A study-level record computed by the runner from other records (convergence, stability)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO analyses (id, groups, model, model_args, seed, status, error, "
                       "attempts, finished_at, name, run_id, args, record, in_spec, position) VALUES "
                       "(?, '[]', NULL, '{}', NULL, ?, ?, 1, ?, ?, NULL, ?, ?, 1, 1000000)",
                       (job_id, status, error, time.time(), name, json.dumps(args),
                        json.dumps(record) if record is not None else None))

    # ---- reading ---------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    def status_of(self, job: Job) -> str | None:
        row = self.db.execute(f"SELECT status FROM {_table(job)} WHERE id = ?", (job.id,)).fetchone()
        return row["status"] if row else None

    def runs(self, *, in_spec: bool = True) -> list[dict[str, Any]]:
        return self._rows("runs", in_spec)

    def analyses(self, name: str | None = None, *, in_spec: bool = True) -> list[dict[str, Any]]:
        rows = self._rows("analyses", in_spec)
        return [r for r in rows if name is None or r["name"] == name]

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(r["metrics"]) for r in
                self.db.execute("SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for table in ("runs", "analyses"):
            out[table] = {r["status"]: r["n"] for r in self.db.execute(
                f"SELECT status, COUNT(*) AS n FROM {table} WHERE in_spec = 1 GROUP BY status")}
        return out

    def _rows(self, table: str, in_spec: bool) -> list[dict[str, Any]]:
        where = "WHERE in_spec = 1" if in_spec else ""
        return [_decode(r) for r in self.db.execute(f"SELECT * FROM {table} {where} ORDER BY position, id")]


def _table(job: Job) -> str:
    return "runs" if job.kind == "train" else "analyses"


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    return {k: (json.loads(row[k]) if k in JSON_COLUMNS and row[k] is not None else row[k]) for k in row.keys()}
