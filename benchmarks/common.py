"""What the mixer benchmarks share: the mixers' arguments at the tiny stage-1 shape, that block, one timer, the
machine line.

Imported by the scripts next to it (``python benchmarks/<script>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from mixerlab.analysis.bench import machine_info
from mixerlab.blocks import MetaBlock
from mixerlab.mixers import MixerContext, build_mixer

# Mixer -> its arguments at the stage-1 shape of a tiny model (C 96, 3 heads, 7x7 windows and kernels).
STAGE1_ARGS: dict[str, dict] = {
    "attention": {},
    "window": {"window_size": 7},
    "halo": {"block_size": 7, "halo_size": 3},
    "sra": {"sr_ratio": 8},
    "dwconv": {"kernel_size": 7},
    "dynconv": {"kernel_size": 7},
    "idynconv": {"kernel_size": 7},
    "dma": {},
    "dcn": {"groups": 4},
    "dwattn": {"window_size": 7},
    "dwnet": {"kernel_size": 7},
    "pooling": {},
    "identity": {},
}
DIM, HEADS = 96, 3


def stage1_block(name: str, side: int) -> MetaBlock:
    """One MetaBlock (pre-norm mixer + MLP, LayerScale 1e-6) with mixer ``name`` at C 96, 3 heads, built alone
    for a ``side x side`` map as a model's first block of stage 1 builds it."""
    ctx = MixerContext(dim=DIM, num_heads=HEADS, stage=0, index=0, resolution=(side, side))
    return MetaBlock(DIM, build_mixer(name, ctx, **STAGE1_ARGS[name]), layer_scale=1e-6)


def median_time(step: Callable[[], object], repeats: int) -> float:
    """Seconds per call of ``step``: the median of ``repeats`` timed calls after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine_line(threads: int) -> str:
    """CPU model, threads, torch and the backend of mixerlab's CPU float32 linears, for a table's caption."""
    m = machine_info(torch.device("cpu"))
    return f"{m['cpu']}, {threads} threads, torch {m['torch']}, mixerlab CPU matmul {m['cpu_matmul']}"
