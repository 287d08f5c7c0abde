"""``mixerlab demo``: the newcomer's first look (what ``make demo`` runs).

Trains U-ConvNeXt-micro (depth-wise convolution mixer) and U-Swin-micro (shifted-window attention
mixer), the same unified architecture of STM-Evaluation, on Fashion-MNIST at 32x32 with the
small-grey recipe, briefly, and prints them side by side: params, GMACs at the training input,
seconds per epoch and test accuracy. Each run keeps its metrics, checkpoints and record under
``<out>/<model>/``. The default (a 12,000-image stratified training subset, 2 epochs) takes a few
minutes on 2 CPU cores; ``--epochs 10 --train-subset 0`` is the full recipe.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .complexity import complexity
from .train import TrainConfig, train
from .zoo import model_config

# Model -> overrides. None needed at 32x32: U-Swin's window 7 fits the 8x8 stage-1 grid as 4x4 windows.
DEMO_MODELS: dict[str, dict[str, Any]] = {"u_convnext_micro": {}, "u_swin_micro": {}}


def run_demo(out: str = "runs/demo", epochs: int = 2, train_subset: int | None = 12000,
             models: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train each model briefly and return one row per model (also written to ``<out>/demo.json``)."""
    rows = []
    for name, args in (models or DEMO_MODELS).items():
        cfg = TrainConfig(model=name, model_args=dict(args), epochs=epochs, run_dir=str(Path(out) / name),
                          overwrite=True,
                          data=replace(TrainConfig().data, train_subset=train_subset or None))
        cfg.validate()
        print(f"\n== {name}: {epochs} epoch(s) on Fashion-MNIST 32x32"
              f"{f', {train_subset} training images' if train_subset else ''} ==", flush=True)
        rec = train(cfg)
        cost = complexity(name, input_size=(1, 32, 32), num_classes=10, **args)
        rows.append({"model": name, "mixer": model_config(name).mixer.name, "params_m": round(cost.params_m, 3),
                     "gmacs_32px": round(cost.gmacs, 4), "status": rec.status,
                     "sec_per_epoch": round(sum(rec.epoch_times) / max(len(rec.epoch_times), 1), 1),
                     "test_top1": rec.final.get("eval_top1"), "run_dir": rec.run_dir})
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(out) / "demo.json.tmp"
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(Path(out) / "demo.json")
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<18} {'mixer':<8} {'params (M)':>10} {'GMACs@32':>9} {'s/epoch':>8} {'test top-1':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        top1 = f"{r['test_top1']:.2f}%" if r["test_top1"] is not None else r["status"]
        lines.append(f"{r['model']:<18} {r['mixer']:<8} {r['params_m']:>10.2f} {r['gmacs_32px']:>9.4f} "
                     f"{r['sec_per_epoch']:>8.1f} {top1:>10}")
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="directory for the runs (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per model (default: 2)")
    p.add_argument("--train-subset", type=int, default=12000,
                   help="stratified training subset size; 0 = all 60,000 images (default: 12000)")


def run(args: argparse.Namespace) -> int:
    rows = run_demo(args.out, args.epochs, args.train_subset)
    print("\n" + format_rows(rows))
    print("GMACs@32: 10^9 multiply-accumulates per 1x32x32 image; test top-1 on the 10,000 test images. "
          f"Runs and metrics: {args.out}/")
    return 0 if all(r["status"] == "completed" for r in rows) else 1


__all__ = ["DEMO_MODELS", "configure", "format_rows", "run", "run_demo"]
