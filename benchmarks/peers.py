"""mixerlab's rebuilds of timm models against the timm models themselves: throughput ratio per mode.

    python benchmarks/peers.py [--batch-size 8 --img-size 224 --threads 2 --warmup 2 --reps 5] [--compile | --best]
                               [--only swin_tiny_ml ...] [--order separate|balanced|...] [--csv benchmarks/results.csv]

For each pair of ``mixerlab.zoo.peers.TIMM_PEERS`` this is ``mixerlab bench MODEL --peer TIMM``: the same
random batch and settings for both, each model in a process of its own (bench's default order, ``separate``),
repetitions alternating in lock-step, and the ratio is the median of the paired throughput ratios mixerlab /
timm (> 1: mixerlab faster). ``--order balanced`` puts both models in one process instead, run twice (mixerlab
first, then timm first) and pooled; the CSV keeps each order's ratio too.
``--compile`` compares compiled with compiled; ``--best`` mixerlab's best inference mode (torch.compile with
inductor's freezing) with timm's eager default (``mixerlab bench MODEL --peer TIMM --compile --freeze
--peer-eager --modes infer``). Rows are appended to the CSV; a Markdown table of the ratios (with the absolute
medians of the same run for scale) is printed at the end.
"""

from __future__ import annotations

import argparse
import os

from mixerlab.analysis.bench import DEFAULT_CSV, ORDERS, append_csv, benchmark
from mixerlab.zoo.peers import TIMM_PEERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compile", action="store_true", help="both models compiled")
    mode.add_argument("--best", action="store_true", help="inference: mixerlab compiled and frozen, timm eager")
    p.add_argument("--only", nargs="*", choices=sorted(TIMM_PEERS), help="subset of the mixerlab models")
    p.add_argument("--order", default="separate", choices=ORDERS, help="see `mixerlab bench --help`")
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    a = p.parse_args()
    setting = "compiled+frozen vs eager" if a.best else ("compiled" if a.compile else "eager")
    lines = ["| mixerlab | timm | mode | setting | mixerlab / timm throughput (q1-q3) | ms/step mixerlab / timm | "
             "load (1 min) |", "|---|---|---|---|---|---|---|"]
    for model, peer in TIMM_PEERS.items():
        if a.only and model not in a.only:
            continue
        rec = benchmark(model, peer=peer, batch_size=a.batch_size, img_size=a.img_size, compile=a.compile or a.best,
                        freeze=a.best, peer_eager=a.best, modes=("infer",) if a.best else ("infer", "train"),
                        warmup=a.warmup, reps=a.reps, threads=a.threads, order=a.order)
        append_csv(rec, a.csv)
        for mode, r in rec.results.items():
            q = r["ratio"]
            lines.append(f"| {model} | {peer} | {mode} | {setting} | {q['median']:.3f} ({q['q1']:.3f}-{q['q3']:.3f}) "
                         f"| {r['mixerlab']['ms_per_step']['median']:.0f} / {r['peer']['ms_per_step']['median']:.0f} "
                         f"| {rec.machine['load_1m']} -> {os.getloadavg()[0]:.2f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
