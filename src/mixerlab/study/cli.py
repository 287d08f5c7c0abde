"""``mixerlab study run | status | export`` and ``mixerlab report``.

    mixerlab study run SPEC --out DIR [--profile P] [--executor local|ray] [--workers N] [--address RAY_ADDRESS]
    mixerlab study status DIR
    mixerlab study export DIR --format csv|json [--to PATH]
    mixerlab report DIR

SPEC is a YAML path or the name of a shipped study (``default`` = ``configs/studies/default.yaml``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..train.checkpoint import atomic_write
from .runner import EXECUTORS, run_study
from .spec import load_spec
from .store import Store

STUDY_HELP = "run a study (a spec of models x seeds x analyses) and report it; status and export its results"
REPORT_HELP = "write report.html and report.md of a study directory"
def shipped() -> tuple[Path, Path]:
    """Where shipped specs live: ./configs/studies/, then the repository's (an editable install or a checkout)."""
    return Path.cwd() / "configs" / "studies", Path(__file__).resolve().parents[3] / "configs" / "studies"


def find_spec(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    roots = shipped()
    for root in roots:
        if (root / f"{spec}.yaml").is_file():
            return root / f"{spec}.yaml"
    names = sorted({q.stem for root in roots if root.is_dir() for q in root.glob("*.yaml")})
    raise ConfigError(f"SPEC={spec!r} is invalid: not a file and not a shipped study ({names})")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="run (or resume) a study", description=run_study.__doc__)
    r.add_argument("spec", metavar="SPEC", help="study spec YAML, or a shipped study name (default, stm_eval, ...)")
    r.add_argument("--out", required=True, help="study directory (results store, runs, report)")
    r.add_argument("--profile", help="a profile of the spec (e.g. quick, full)")
    r.add_argument("--executor", choices=EXECUTORS, default="local", help="local processes or a Ray cluster")
    r.add_argument("--workers", type=int, help="jobs at once (default: local, one per core; ray, what fits)")
    r.add_argument("--address", help="Ray cluster address ('auto', host:port); default: start a local one")
    r.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    r.set_defaults(study_handler=_run)
    s = sub.add_parser("status", help="summarise a study directory's store")
    s.add_argument("dir", metavar="DIR")
    s.set_defaults(study_handler=_status)
    e = sub.add_parser("export", help="write the store's tables as CSV files or one JSON document")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--format", choices=("csv", "json"), default="json")
    e.add_argument("--to", help="json: a file (default: stdout); csv: a folder (default: DIR/export)")
    e.set_defaults(study_handler=_export)


def run(args: argparse.Namespace) -> int:
    return args.study_handler(args)


def _run(args: argparse.Namespace) -> int:
    study = load_spec(find_spec(args.spec), args.profile)
    print(f"study {study.name}{f' (profile {study.profile})' if study.profile else ''}: {len(study.jobs)} jobs "
          f"({len(study.train_jobs)} training runs) -> {args.out}", file=sys.stderr, flush=True)
    summary = run_study(study, args.out, executor=args.executor, workers=args.workers, address=args.address,
                        report=not args.no_report)
    if summary.interrupted:
        return 130
    print(f"{summary.ran} jobs ran in {summary.wall_s / 60:.1f} min; by status: {summary.counts}")
    for p in summary.report:
        print(f"report: {p}")
    return 0 if summary.ok else 1


def _status(args: argparse.Namespace) -> int:
    with Store(args.dir, readonly=True) as store:
        meta = store.meta()
        print(f"study {meta.get('name')} (profile {meta.get('profile')}) in {args.dir}")
        for table, counts in store.counts().items():
            total = sum(counts.values())
            print(f"  {table}: {total} - " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for row in store.runs() + store.analyses():
            if row["status"] in ("failed", "skipped"):
                what = row.get("name") or "train"
                print(f"  {row['status']}: {row['id']} {what} {row['model'] or ''} {row['model_args'] or ''}: "
                      f"{row['error']}")
    return 0


def export_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The store as plain tables: runs (one per training run), epochs, analyses (records as JSON)."""
    runs = [{"id": r["id"], "groups": r["groups"], "model": r["model"], "model_args": r["model_args"],
             "seed": r["seed"], "status": r["status"], "error": r["error"], "eval_top1": r["eval_top1"],
             "best_top1": r["best_top1"], "params": (r["record"] or {}).get("params"),
             "epochs": (r["record"] or {}).get("epochs_completed"), "wall_s": r["wall_s"],
             "attempts": r["attempts"], "final": r["final"], "config": r["config"]} for r in store.runs()]
    epochs = [{"run_id": r["id"], **m} for r in store.runs() for m in store.epochs(r["id"])]
    analyses = [{"id": a["id"], "name": a["name"], "run_id": a["run_id"], "model": a["model"],
                 "model_args": a["model_args"], "seed": a["seed"], "args": a["args"], "status": a["status"],
                 "error": a["error"], "wall_s": a["wall_s"], "record": a["record"]} for a in store.analyses()]
    return {"runs": runs, "epochs": epochs, "analyses": analyses}


def _export(args: argparse.Namespace) -> int:
    with Store(args.dir, readonly=True) as store:
        tables = export_rows(store)
    if args.format == "json":
        text = json.dumps({"study": args.dir, **tables}, indent=2)
        if args.to:
            atomic_write(Path(args.to), lambda f: f.write(text.encode()))
        else:
            print(text)
        return 0
    folder = Path(args.to or Path(args.dir) / "export")
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        cols = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        data = buf.getvalue().encode()
        atomic_write(folder / f"{name}.csv", lambda f, data=data: f.write(data))
        print(folder / f"{name}.csv")
    return 0


def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a study directory written by `mixerlab study run`")


def run_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    for path in write_report(args.dir):
        print(path)
    return 0
