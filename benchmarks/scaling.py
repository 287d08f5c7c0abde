"""Throughput vs input resolution per mixer, and a check of the expected growth.

    python benchmarks/scaling.py [--threads 2] [--sizes 64 128 256 384 512] [--repeats 3] [--png docs/scaling.png]

One ``MetaBlock`` per mixer (built alone, as a model builds it) at the tiny scale's stage-1 width (C 96, 3 heads),
on the stage-1 map of an input of each size (side / 4: 16x16 for 64 px ... 128x128 for 512 px), batch 1,
inference (``torch.inference_mode``), fp32, median of ``--repeats`` after a warm-up.

The growth check fits, by least squares over the sizes of at least 256 px, the exponent ``k`` of
``time ~ tokens^k`` of each block *relative to the identity block* (the same norm + MLP with no spatial mixing,
linear by construction), so that cache and machine effects common to all blocks cancel: a local mixer (a fixed
window, kernel or block per token) must add nothing (``-0.25 <= k <= 0.35``), global attention must grow
(``k >= 0.6``: every token attends to every token, quadratic against the identity's linear). Spatial-reduction
attention is quadratic with its keys cut by ``sr^2`` (64 here), so at these sizes it sits in between; it is
reported, not checked.
Prints a Markdown table and writes a log-log figure.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from common import DIM, machine_line, median_time, stage1_block

# mixer -> expected growth: "linear" | "quadratic" | "reported" (arguments: common.STAGE1_ARGS)
EXPECTED: dict[str, str] = {
    "attention": "quadratic", "window": "linear", "halo": "linear", "sra": "reported", "dwconv": "linear",
    "dynconv": "linear", "idynconv": "linear", "dma": "linear", "dcn": "linear", "dwattn": "linear",
    "pooling": "linear", "identity": "linear",
}
BOUNDS = {"linear": (-0.25, 0.35), "quadratic": (0.6, 1.5)}  # of the exponent relative to the identity block
FIT_FROM = 256  # px: smaller maps are dominated by per-call overheads, not by the operator's growth


def block_time(name: str, side: int, repeats: int) -> float:
    block = stage1_block(name, side).eval()
    x = torch.randn(1, side, side, DIM)
    with torch.inference_mode():
        return median_time(lambda: block(x), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 384, 512])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*")
    p.add_argument("--png", help="write the log-log figure here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sizes = sorted(a.sizes)
    results: dict[str, list[float]] = {}
    for name in EXPECTED:
        if a.only and name not in a.only:
            continue
        results[name] = [block_time(name, s // 4, a.repeats) for s in sizes]
        print(name, [round(t * 1000, 2) for t in results[name]], flush=True)
    tokens = [(s // 4) ** 2 for s in sizes]
    if "identity" not in results:
        results["identity"] = [block_time("identity", s // 4, a.repeats) for s in sizes]
    fit = [i for i, s in enumerate(sizes) if s >= FIT_FROM]
    fit = fit if len(fit) >= 2 else list(range(len(sizes)))  # a slope needs two sizes

    def exponent(times: list[float]) -> float:  # least-squares slope of log(time / identity) on log(tokens)
        xs = [math.log(tokens[i]) for i in fit]
        ys = [math.log(times[i] / results["identity"][i]) for i in fit]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")

    print(f"\nmachine: {machine_line(a.threads)}; "
          f"one MetaBlock, C 96, 3 heads, batch 1, inference, fp32, median of {a.repeats}; map = input / 4")
    print("| mixer | " + " | ".join(f"{s} px ({s // 4}²) ms" for s in sizes)
          + f" | k vs identity (>= {FIT_FROM} px) | expected | check |")
    print("|---|" + "---:|" * len(sizes) + "---:|---|---|")
    failed = []
    for name, times in results.items():
        k = exponent(times)
        expected = EXPECTED[name] if name != "identity" else "reported"
        lo, hi = BOUNDS.get(expected, (-math.inf, math.inf))
        ok = lo <= k <= hi
        if not ok:
            failed.append(name)
        check = "ok" if expected == "reported" or ok else f"outside [{lo}, {hi}]"
        print(f"| {name} | " + " | ".join(f"{t * 1000:.1f}" for t in times) + f" | {k:.2f} | {expected} | {check} |")
    print(f"\ngrowth check: {'all as expected' if not failed else 'NOT as expected: ' + ', '.join(failed)}")
    if a.png:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter

        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        colours = [matplotlib.colormaps["tab20"](i / 20) for i in range(0, 20, 20 // max(1, len(results)) or 1)]
        for (name, times), colour in zip(results.items(), colours, strict=False):
            ax.loglog(sizes, [1 / t for t in times], marker="o", label=name, color=colour,
                      linestyle="--" if EXPECTED[name] == "quadratic" else "-")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("input resolution (px; stage-1 map = side / 4)")
        ax.set_ylabel("blocks per second (batch 1)")
        ax.set_title(f"One MetaBlock per mixer, C 96, inference, {a.threads} threads")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.savefig(a.png, dpi=120, bbox_inches="tight")
        print(f"figure: {a.png}")


if __name__ == "__main__":
    main()
