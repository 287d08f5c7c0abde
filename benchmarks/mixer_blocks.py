"""Forward+backward time of one MetaBlock per mixer at the tiny scale's stage-1 shape.

    python benchmarks/mixer_blocks.py [--batch 8 --dim 96 --size 56 --heads 3 --repeats 3] [--csv out.csv]

Each mixer is built alone (``build_mixer``) inside a ``MetaBlock`` and timed on random input:
one warm-up step, then the median of ``--repeats`` steps of forward, mean-square loss, backward.
Prints a Markdown table (and optionally CSV) with the machine, torch version and settings.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time

import torch

from mixerlab.blocks import MetaBlock
from mixerlab.mixers import MixerContext, build_mixer

# name -> mixer args at the stage-1 shape (stage 0 of a tiny model)
CASES: dict[str, tuple[str, dict]] = {
    "window (Swin, w7)": ("window", {"window_size": 7}),
    "dwconv (U-ConvNeXt, k7)": ("dwconv", {"kernel_size": 7}),
    "attention (global)": ("attention", {}),
    "halo (b7, h3)": ("halo", {"block_size": 7, "halo_size": 3}),
    "sra (PVT, sr 8)": ("sra", {"sr_ratios": [8, 4, 2, 1]}),
    "dwattn (w7)": ("dwattn", {"window_size": 7}),
    "dynconv (k7)": ("dynconv", {"kernel_size": 7}),
    "idynconv (k7)": ("idynconv", {"kernel_size": 7}),
    "dma": ("dma", {}),
    "dcn (DCNv3, 3x3)": ("dcn", {"groups": [4, 8, 16, 32]}),
    "dwnet (k7)": ("dwnet", {"kernel_size": 7}),
    "pooling": ("pooling", {}),
    "identity": ("identity", {}),
}


def time_block(name: str, args: dict, b: int, c: int, s: int, heads: int, repeats: int) -> float:
    ctx = MixerContext(dim=c, num_heads=heads, stage=0, index=0, resolution=(s, s))
    block = MetaBlock(c, build_mixer(name, ctx, **args), layer_scale=1e-6)
    x = torch.randn(b, s, s, c, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        block(x).square().mean().backward()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", help="subset of mixer names")
    p.add_argument("--csv")
    a = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}; B={a.batch} C={a.dim} {a.size}x{a.size} heads={a.heads}, fp32, "
          f"median of {a.repeats} after 1 warm-up")
    print("| mixer | fwd+bwd (s) |\n|---|---|")
    rows = []
    for label, (name, args) in CASES.items():
        if a.only and name not in a.only:
            continue
        t = time_block(name, args, a.batch, a.dim, a.size, a.heads, a.repeats)
        rows.append({"mixer": label, "name": name, "seconds": round(t, 4)})
        print(f"| {label} | {t:.3f} |", flush=True)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
