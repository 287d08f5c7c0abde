"""Effective receptive field (ERF) of every stage: the method of RepLKNet (Ding et al., 2022, "Scaling Up
Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs"), as STM-Evaluation (Wang et al., 2022,
"Demystify Transformers & Convolutions in Modern Image Deep Networks") applies it per stage. SPEC 8.3.

For each stage output ``F`` (``forward_intermediates``, ``(B, C, h, w)``) and real input images ``x``::

    score_b = sum_c ReLU(F[b, c, h // 2, w // 2])           the central position, all channels
    g_b     = d score_b / d x_b                              (C_in, H, W)
    M       = 1/N sum_{b=1..N} sum_{c_in} ReLU(g_b)          exactly N = num_images images
    A       = log10(M + 1) / max(log10(M + 1))               magnitudes compressed, normalised to [0, 1]

and for each threshold t in 20/30/50/99%: the smallest square centred at ``(H // 2, W // 2)`` (side 1, 3,
5, ... clipped to the map) whose sum of ``A`` exceeds ``t * sum(A)``; ``side_ratio = side / H`` and
``area_ratio = side^2 / (H W)``. The model runs in eval mode (BatchNorm statistics fixed, no drop path),
as in the reference, so the images of a batch are independent and the gradient of the batch's summed
score with respect to image ``b`` is image ``b``'s own gradient: batching changes nothing.

Where this differs from the reference code, on purpose:

* Images are counted exactly. STM-Evaluation's loop increments its counter once per stage (so it stops
  after ``num_images / 4`` images) and divides the sum by that counter (a 4x smaller ``M``, which changes
  ``A`` through the log); here ``M`` is the mean over exactly ``num_images`` images.
* A square of side 1 is a candidate and the square may grow to the whole map; the reference starts at
  side 3 and gives up one pixel short of the map.
* A non-finite gradient is an error naming the batch, not an image silently skipped.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..data import DataBundle, DataConfig, build_data, loader
from ..errors import ConfigError, check_choice, check_int, is_int
from ..train.rundir import RunDir
from ..zoo import model_config
from .base import ModelSource, Record, resolve_model
from .cli import AnalysisCommand, cli_model, register

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Maps up to this side go into the JSON record (micro scale: 4 stages of 32 x 32, 3 decimals); larger ones
# only into the figure, so that records stay small.
MAX_MAP_SIDE_IN_RECORD = 32


@dataclass
class ERFStage:
    """One stage's ERF: ratios keyed by threshold ("0.2", ...), the stage's grid and its normalised map."""

    index: int
    grid: list[int]
    side: dict[str, int | None]
    side_ratio: dict[str, float | None]
    area_ratio: dict[str, float | None]
    map: list[list[float]] | None = None


@dataclass
class ERFRecord(Record):
    input_size: list[int] = field(default_factory=list)  # (C, H, W)
    num_images: int = 0
    thresholds: list[float] = field(default_factory=lambda: list(THRESHOLDS))
    dtype: str = "float32"
    data: dict[str, Any] = field(default_factory=dict)
    stages: list[ERFStage] = field(default_factory=list)


def centred_square(a: Tensor, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, int | None]:
    """Side (pixels) of the smallest square centred at ``(H // 2, W // 2)``, clipped to the square map ``a``,
    whose sum exceeds ``t * a.sum()`` for each threshold ``t`` (None for all when the map is all zero)."""
    h = a.shape[0]
    if a.sum() <= 0:
        return dict.fromkeys(thresholds)
    total, c = a.sum(), h // 2
    out: dict[float, int | None] = {}
    for r in range(c + 1):  # the clipped square of half-width c covers the whole (even or odd) map
        lo, hi = c - r, min(c + r, h - 1)
        inside = a[lo:hi + 1, lo:hi + 1].sum()
        for t in thresholds:
            if t not in out and inside > t * total:
                out[t] = hi - lo + 1
        if len(out) == len(thresholds):
            break
    return out


def stage_maps(model: nn.Module, images: Tensor, indices: Sequence[int], batch_size: int
               ) -> tuple[list[Tensor], list[list[int]]]:
    """The mean over ``images`` of ``sum_{c_in} ReLU(d score / d x)`` for each stage in ``indices`` (sorted,
    distinct) as ``(H, W)`` float64 maps, and each stage's output grid; the model must be in eval mode
    (see the module docstring)."""
    sums = [torch.zeros(images.shape[-2:], dtype=torch.float64, device=images.device) for _ in indices]
    grids: list[list[int]] = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].detach().requires_grad_(True)
        feats = model.forward_intermediates(x, indices=list(indices), intermediates_only=True, stop_early=True)
        grids = [list(f.shape[-2:]) for f in feats]
        for k, f in enumerate(feats):
            h, w = f.shape[-2:]
            score = F.relu(f[:, :, h // 2, w // 2]).sum()
            (g,) = torch.autograd.grad(score, x, retain_graph=k < len(feats) - 1)
            if not torch.isfinite(g).all():
                raise FloatingPointError(f"non-finite input gradient for stage {indices[k]} on images "
                                         f"{start}..{start + x.shape[0] - 1}: the model produces inf/NaN")
            sums[k] += F.relu(g).sum(dim=(0, 1), dtype=torch.float64)
    return [s / images.shape[0] for s in sums], grids


def default_data(model: nn.Module, source: dict[str, Any]) -> DataConfig:
    """The data an analysis draws images from when none is given: a run's own data, else Fashion-MNIST at
    the model's ``img_size`` / ``in_chans``."""
    if source.get("kind") == "run":
        return RunDir(source["run_dir"]).config().data
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ConfigError("data=None is invalid for a model without a mixerlab config: pass a DataConfig or "
                          "DataBundle giving the input geometry")
    return DataConfig(name="fashion-mnist", img_size=cfg.image_hw[0], in_chans=cfg.in_chans)


def eval_images(data: DataConfig | DataBundle, num_images: int) -> tuple[Tensor, Tensor, DataBundle]:
    """Exactly ``num_images`` un-augmented eval images and their labels: a stratified eval subset of a
    DataConfig (fixed by its seed), or the first ``num_images`` of a DataBundle's eval split; and the bundle
    (its mean / std and description)."""
    if isinstance(data, DataConfig):
        data = build_data(DataConfig(**{**data.to_dict(), "eval_subset": num_images, "augment": "none",
                                        "random_erasing": 0.0}))
    n = len(data.eval)  # type: ignore[arg-type]
    if n < num_images:
        raise ConfigError(f"num_images={num_images} is invalid: the eval split has only {n} images")
    xs, ys, taken = [], [], 0
    for x, y in loader(data.eval, min(num_images, 256), train=False, seed=0):
        xs.append(x[:num_images - taken])
        ys.append(y[:num_images - taken])
        taken += xs[-1].shape[0]
        if taken == num_images:
            break
    return torch.cat(xs), torch.cat(ys), data


def describe_data(bundle: DataBundle) -> dict[str, Any]:
    return {**(bundle.config.to_dict() if bundle.config is not None else {}), "source": bundle.source}


def erf(model: ModelSource, data: DataConfig | DataBundle | None = None, *, num_images: int = 50,
        stages: Sequence[int] | None = None, batch_size: int = 16, dtype: str = "float32",
        weights: str = "model", device: str = "cpu", **overrides: Any) -> ERFRecord:
    """Per-stage ERF of ``model`` (a MixerNet, a registered name: fresh and untrained, built with
    ``overrides`` such as ``img_size=32, in_chans=1``, or a run directory: its ``weights``) on ``num_images``
    real images; see the module docstring for the protocol.

    ``data``: a DataConfig (its eval split; default: the run's data, else Fashion-MNIST at the model's
    ``img_size`` / ``in_chans``) or a built DataBundle. ``stages``: indices of ``forward_intermediates``
    (default all: the stages of a hierarchical model, the blocks of an isotropic one). ``dtype='float64'``
    computes on a float64 copy of the model (exact zeros outside the receptive field stay exactly zero).
    The model's train/eval mode is restored afterwards."""
    check_int("num_images", num_images)
    check_int("batch_size", batch_size)
    check_choice("dtype", dtype, DTYPES)
    net, source = resolve_model(model, which=weights, device=device, **overrides)
    if not hasattr(net, "forward_intermediates"):
        raise ConfigError(f"model={type(net).__name__} is invalid: the ERF needs forward_intermediates (timm API)")
    n_out = len(net.feature_info)
    take = sorted(set(range(n_out) if stages is None else stages))
    if not take or any(not is_int(i) or not 0 <= i < n_out for i in take):
        raise ConfigError(f"stages={list(stages or [])!r} is invalid: indices in 0..{n_out - 1} (the model's "
                          f"{n_out} intermediate outputs)")
    data = default_data(net, source) if data is None else data
    if isinstance(data, DataConfig):  # checked before any image is read
        check_in_chans(net, data.in_chans)
    images, _, bundle = eval_images(data, num_images)
    check_in_chans(net, images.shape[1])
    if images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"input size {tuple(images.shape[-2:])} is invalid: the ERF ratios need a square input")

    torch_dtype = DTYPES[dtype]
    ref = next(net.parameters())
    work = net if ref.dtype == torch_dtype else copy.deepcopy(net).to(torch_dtype)
    was_training = work.training
    work.eval()
    try:
        raw, grids = stage_maps(work, images.to(ref.device, torch_dtype), take, batch_size)
    finally:
        work.train(was_training)

    side = images.shape[-1]
    stages_out, maps = [], []
    for i, m, grid in zip(take, raw, grids, strict=True):
        a = torch.log10(m.cpu() + 1)
        a = a / a.max() if a.max() > 0 else a  # an all-zero map (no positive central feature) stays zero
        sides = {str(t): s for t, s in centred_square(a).items()}
        stages_out.append(ERFStage(
            index=i, grid=grid, side=sides,
            side_ratio={t: None if s is None else s / side for t, s in sides.items()},
            area_ratio={t: None if s is None else s * s / side**2 for t, s in sides.items()},
            map=[[round(v, 3) for v in row] for row in a.tolist()] if side <= MAX_MAP_SIDE_IN_RECORD else None))
        maps.append(a)
    record = ERFRecord(source=source, input_size=list(images.shape[1:]), num_images=num_images, dtype=dtype,
                       data=describe_data(bundle), stages=stages_out)
    record.figures["heatmaps"] = heatmaps(stages_out, maps, title=str(source.get("model", "")))
    return record


def check_in_chans(net: nn.Module, in_chans: int) -> None:
    """The data's channels must be the model's (a module without ``in_chans`` is not checked)."""
    if getattr(net, "in_chans", in_chans) != in_chans:
        raise ConfigError(f"data.in_chans={in_chans} is invalid: the model takes in_chans={net.in_chans}")


def heatmaps(stages: Sequence[ERFStage], maps: Sequence[Tensor], title: str = "") -> Figure:
    """One panel per stage: the normalised ERF map with the 50% and 99% squares outlined."""
    cols = min(4, len(stages))
    rows = -(-len(stages) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.set_axis_off()
    im = None
    for ax, st, a in zip(axes.flat, stages, maps, strict=False):
        im = ax.imshow(a.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        c = a.shape[0] // 2
        for t, colour in (("0.5", "white"), ("0.99", "red")):
            s = st.side[t]
            if s is not None:
                lo = max(c - s // 2, 0)
                ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), s, s, fill=False, edgecolor=colour, linewidth=1))
        r50, r99 = st.side_ratio["0.5"], st.side_ratio["0.99"]
        ax.set_title(f"stage {st.index}  side 50%: {_fmt(r50)}  99%: {_fmt(r99)}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="log10(grad + 1), normalised")
    fig.suptitle(f"effective receptive field {title}".strip() + " (white: 50%, red: 99% square)", fontsize=9)
    return fig


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# ---- mixerlab analyze erf ---------------------------------------------------------------------------

def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-images", type=int, default=50, help="images averaged, exactly (default 50, RepLKNet's)")
    p.add_argument("--stages", type=int, nargs="+", default=None,
                   help="forward_intermediates indices (default: every stage / block)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--data", default=None, help="dataset (default: the run's, else fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="dataset directory (cifar, imagefolder)")


def cli_data(args: argparse.Namespace) -> DataConfig | None:
    """``--data`` / ``--data-dir`` replace the dataset of :func:`default_data` (the geometry stays the model's,
    or the run's); None when neither is given."""
    swap = {k: v for k, v in (("name", args.data), ("data_dir", args.data_dir)) if v is not None}
    if not swap:
        return None
    model, overrides = cli_model(args)
    if args.run is not None:
        base = RunDir.find(args.run).config().data
    else:
        cfg = model_config(str(model), **overrides)
        base = DataConfig(img_size=cfg.image_hw[0], in_chans=cfg.in_chans)
    return dataclasses.replace(base, **swap)


def _run(args: argparse.Namespace) -> ERFRecord:
    model, overrides = cli_model(args)
    return erf(model, cli_data(args), num_images=args.num_images, stages=args.stages, batch_size=args.batch_size,
               dtype=args.dtype, weights=args.weights, **overrides)


def _table(record: Record) -> str:
    assert isinstance(record, ERFRecord)
    ts = [str(t) for t in record.thresholds]
    head = "stage  grid   " + "  ".join(f"side@{t:<4}" for t in ts) + "  " + "  ".join(f"area@{t:<4}" for t in ts)
    lines = [head, "-" * len(head)]
    for st in record.stages:
        grid = "x".join(str(g) for g in st.grid)
        lines.append(f"{st.index:<5}  {grid:<5}  " + "  ".join(f"{_fmt(st.side_ratio[t]):>8}" for t in ts) + "  "
                     + "  ".join(f"{_fmt(st.area_ratio[t]):>8}" for t in ts))
    h, w = record.input_size[1:]
    lines.append(f"ratios of the {h}x{w} input: smallest centred square holding > t of the normalised "
                 f"log10(ReLU(grad) + 1) map; {record.num_images} images")
    return "\n".join(lines)


register(AnalysisCommand("erf", "effective receptive field per stage (RepLKNet / STM-Eval method, SPEC 8.3)",
                         _configure, _run, _table))
