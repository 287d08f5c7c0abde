"""``mixerlab demo``: the main job (what ``make demo`` runs).

Runs the default study, ``configs/studies/default.yaml``, with its ``quick`` profile into ``runs/demo``: a
miniature reproduction of the five source papers on Fashion-MNIST at 32x32 (every mixer in the unified micro
architecture, softmax vs ReLU vs LayerNorm attention, patchify vs convolutional stem under an AdamW / SGD sweep,
receptive fields, invariance, measured mixer properties, attention as dynamic convolution), then prints the
headline table and the path of the report. Rerunning resumes: finished runs are kept, interrupted ones continue
from their checkpoints.
"""

from __future__ import annotations

import argparse
from typing import Any

from .study import load_spec, run_study
from .study.cli import find_spec


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The report's model table, abridged for a terminal."""
    head = f"{'model':<34} {'params (M)':>10} {'GMACs':>7} {'train img/s':>11} {'top-1 (%)':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        top1 = r.get("top1_mean")
        acc = f"{top1:.2f}" if isinstance(top1, (int, float)) else "-"
        fmt = {k: (f"{r[k]:.{p}f}" if isinstance(r.get(k), (int, float)) else "-")
               for k, p in (("params_m", 2), ("gmacs", 4), ("train_ips", 0))}
        lines.append(f"{r['label'][:34]:<34} {fmt['params_m']:>10} {fmt['gmacs']:>7} {fmt['train_ips']:>11} "
                     f"{acc:>10}")
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="study directory (default: runs/demo)")
    p.add_argument("--profile", default="quick", help="profile of the default study (default: quick)")
    p.add_argument("--workers", type=int, help="jobs at once (default: one per core)")


def run(args: argparse.Namespace) -> int:
    from .report import model_table

    study = load_spec(find_spec("default"), args.profile)
    summary = run_study(study, args.out, workers=args.workers)
    if summary.interrupted:
        return 130
    print("\n" + format_rows(model_table(args.out)))
    print(f"\n{summary.ran} jobs in {summary.wall_s / 60:.1f} min; by status: {summary.counts}")
    for path in summary.report:
        print(f"report: {path}")
    return 0 if summary.ok else 1


__all__ = ["configure", "format_rows", "run"]
