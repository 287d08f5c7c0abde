"""Invariance to translation, rotation and scale: the protocol of STM-Evaluation (Wang et al., 2022,
"Demystify Transformers & Convolutions in Modern Image Deep Networks", section 4.3), SPEC 8.6.

Each eval image ``x`` (the data pipeline's un-augmented view, ``S x S``) is predicted once as is (the
reference ``p = softmax(f(x))``, label ``y0 = argmax p``) and once per setting ``T`` of a sweep; per setting::

    top1        = % of T(x) predicted as the true label
    consistency = % of T(x) predicted as y0                 (100% means the prediction never changed)
    soft_ce     = mean of -sum_k p_k log softmax(f(T(x)))_k (timm's SoftTargetCrossEntropy to p; at the
                                                             identity it is the entropy of p, not 0)

The transforms act in pixel space (the normalisation undone, zero = black fill, then normalised again), so
what comes in from outside the image is black, as in the reference's zero padding of ``[0, 1]`` tensors:

* translation by ``s`` pixels: the crop window moves ``s`` pixels in each of the 8 directions (diagonals
  ``s`` along both axes); STM-Evaluation resizes to ``S / 0.875``, moves the centre crop and zero-pads where
  the crop leaves the image. Here the eval view is the whole image (crop ratio 1: Fashion-MNIST and CIFAR
  are not centre-cropped), so a shift is pad-then-crop (``shift_mode='pad'``) or, for models that should be
  exactly equivariant, a circular roll (``'circular'``). The reference draws one direction per image with
  ``np.random.randint(7)``, which never picks its eighth direction; here every image is evaluated in all 8
  and a shift's metrics are the mean over the 8 x N predictions (``directions`` keeps the per-direction
  consistency).
* rotation by ``a`` degrees (counter-clockwise, about the image centre, bicubic, black corners): the
  reference's "pre-rotation" rotates the resized image and then centre-crops; with crop ratio 1 the crop is
  the whole frame.
* scale (crop ratio ``r``): resize the view to ``int(S / r)`` (bicubic, antialiased) and centre-crop or
  zero-pad back to ``S``, torchvision's ``Resize`` + ``CenterCrop`` as in the reference's
  ``standard_transform(crop_ratio=r)``; ``r < 1`` zooms in, ``r > 1`` out.

The identity settings (shift 0, angle 0, ratio 1) are not resampled: the model would see exactly the
untransformed input, so their logits are the reference's (not recomputed: 3 forwards fewer per batch) and their
consistency is 100% by construction of the protocol. Default sweeps scale the reference's (shifts 0..64 step 4
at 224 px, angles 0..90 step 5, ratios 0.25..2 step 0.125) to ``S``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from ..data import DataBundle, DataConfig
from ..errors import ConfigError, check_choice, check_int, is_int
from .base import ModelSource, Record, resolve_model
from .cli import AnalysisCommand, cli_model, register
from .erf import check_in_chans, cli_data, default_data, describe_data, eval_images

SHIFT_MODES = ("pad", "circular")
# The 8 directions the crop window moves in, as (row, column) steps; names as the window moves (the image
# content moves the other way).
DIRECTIONS = {"down": (1, 0), "right": (0, 1), "up": (-1, 0), "left": (0, -1), "down-right": (1, 1),
              "up-right": (-1, 1), "up-left": (-1, -1), "down-left": (1, -1)}
REFERENCE_SIDE = 224  # STM-Evaluation's input size, which its sweeps are given for


def default_shifts(side: int) -> list[int]:
    """The reference's 0..64 px step 4 at 224 px, scaled to ``side`` (step at least 1 px)."""
    top, step = round(64 * side / REFERENCE_SIDE), max(1, round(4 * side / REFERENCE_SIDE))
    return list(range(0, top + 1, step))


DEFAULT_ANGLES = tuple(range(0, 91, 5))
DEFAULT_SCALES = tuple(0.25 + 0.125 * i for i in range(15))  # 0.25 .. 2.0, holding 1.0


# ---- transforms of pixel-space batches (B, C, S, S), values in [0, 1] ------------------------------------

def shift(u: Tensor, dy: int, dx: int, mode: str = "pad") -> Tensor:
    """Move the crop window by ``(dy, dx)`` pixels (content moves by ``(-dy, -dx)``): zero fill ('pad') or
    wrap-around ('circular'); ``u`` itself for no move."""
    if dy == dx == 0:
        return u
    if mode == "circular":
        return torch.roll(u, shifts=(-dy, -dx), dims=(2, 3))
    h, w = u.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = F.pad(u, (p, p, p, p))
    return padded[..., p + dy:p + dy + h, p + dx:p + dx + w]


def rotate(u: Tensor, angle: float) -> Tensor:
    """Rotate counter-clockwise by ``angle`` degrees about the centre, bicubic, black outside (same frame)."""
    if angle % 360 == 0:
        return u
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    h, w = u.shape[-2:]
    # affine_grid maps output to input coordinates in [-1, 1]; the aspect factors keep the rotation rigid on
    # non-square frames. An output point is the input point rotated clockwise (image y points down).
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=u.dtype, device=u.device)
    grid = F.affine_grid(theta.expand(u.shape[0], 2, 3), list(u.shape), align_corners=False)
    return F.grid_sample(u, grid, mode="bicubic", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def rescale(u: Tensor, ratio: float) -> Tensor:
    """Resize to ``int(S / ratio)`` then centre-crop or zero-pad back to ``S`` (torchvision's CenterCrop
    offsets), as STM-Evaluation's ``standard_transform(crop_ratio=ratio)``."""
    s = u.shape[-1]
    n = int(s / ratio)
    if n == s:
        return u
    # antialias=True also when enlarging: it selects PIL's bicubic kernel (a = -0.5), which the reference uses
    v = F.interpolate(u, size=(n, n), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    if n > s:
        top = round((n - s) / 2.0)  # torchvision CenterCrop: int(round(.)), round-half-even
        return v[..., top:top + s, top:top + s]
    lo, hi = (s - n) // 2, (s - n + 1) // 2
    return F.pad(v, (lo, hi, lo, hi))


# ---- the analysis ------------------------------------------------------------------------------------------

@dataclass
class InvarianceRecord(Record):
    num_images: int = 0
    input_size: list[int] = field(default_factory=list)
    shift_mode: str = "pad"
    data: dict[str, Any] = field(default_factory=dict)
    top1: float = 0.0  # on the untransformed images
    translation: list[dict[str, Any]] = field(default_factory=list)  # {shift, top1, consistency, soft_ce, ...}
    rotation: list[dict[str, Any]] = field(default_factory=list)  # {angle, ...}
    scale: list[dict[str, Any]] = field(default_factory=list)  # {ratio, ...}


class _Tally:
    """Sums of correct, consistent and soft CE over the predictions of one setting."""

    def __init__(self) -> None:
        self.n = self.correct = self.consistent = 0
        self.ce = 0.0

    def add(self, logits: Tensor, labels: Tensor, ref_prob: Tensor) -> None:
        pred = logits.argmax(-1)
        self.n += labels.numel()
        self.correct += int((pred == labels).sum())
        self.consistent += int((pred == ref_prob.argmax(-1)).sum())
        self.ce += float(-(ref_prob * F.log_softmax(logits.double(), -1)).sum(-1).sum())

    def __iadd__(self, other: _Tally) -> _Tally:
        self.n += other.n
        self.correct += other.correct
        self.consistent += other.consistent
        self.ce += other.ce
        return self

    def metrics(self) -> dict[str, float]:
        return {"top1": 100.0 * self.correct / self.n, "consistency": 100.0 * self.consistent / self.n,
                "soft_ce": self.ce / self.n}


def _check_sweeps(shifts: Sequence[int], angles: Sequence[float], scales: Sequence[float], side: int) -> None:
    if any(not is_int(s) or not 0 <= s < side for s in shifts):
        raise ConfigError(f"shifts={list(shifts)!r} is invalid: integers in 0..{side - 1} (pixels of the "
                          f"{side} px input)")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) for a in angles):
        raise ConfigError(f"angles={list(angles)!r} is invalid: finite numbers (degrees)")
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= side for r in scales):
        raise ConfigError(f"scales={list(scales)!r} is invalid: crop ratios in (0, {side}] (resize to "
                          f"int({side} / ratio) >= 1 px)")


def invariance(model: ModelSource, data: DataConfig | DataBundle | None = None, *,
               shifts: Sequence[int] | None = None, angles: Sequence[float] | None = DEFAULT_ANGLES,
               scales: Sequence[float] | None = DEFAULT_SCALES, num_images: int = 100, batch_size: int = 100,
               shift_mode: str = "pad", weights: str = "model", device: str = "cpu",
               **overrides: Any) -> InvarianceRecord:
    """Top-1, consistency and soft CE of ``model`` under each translation / rotation / scale setting (see the
    module docstring) on exactly ``num_images`` eval images.

    ``model``: a MixerNet (or any classifier module, with ``data``), a registered name (fresh, built with
    ``overrides``) or a run directory (its ``weights``). ``data``: a DataConfig (a stratified eval subset),
    a DataBundle (its first eval images) or None (the run's data, else Fashion-MNIST at the model's
    geometry). ``shifts`` None: the reference's sweep scaled to the input size; an empty sweep is skipped."""
    check_int("num_images", num_images)
    check_int("batch_size", batch_size)
    check_choice("shift_mode", shift_mode, SHIFT_MODES)
    net, source = resolve_model(model, which=weights, device=device, **overrides)
    data = default_data(net, source) if data is None else data
    # the sweeps and channels are checked against the input before any image is read
    side = data.img_size if isinstance(data, DataConfig) else data.eval[0][0].shape[-1]
    check_in_chans(net, data.in_chans if isinstance(data, DataConfig) else data.eval[0][0].shape[0])
    shifts = default_shifts(side) if shifts is None else list(dict.fromkeys(shifts))  # a shift once
    angles, scales = list(angles or ()), list(scales or ())
    _check_sweeps(shifts, angles, scales, side)
    images, labels, bundle = eval_images(data, num_images)
    if images.shape[-2] != side:
        raise ConfigError(f"input size {tuple(images.shape[-2:])} is invalid: the sweeps need a square input")

    mean = torch.tensor(bundle.mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, dtype=images.dtype).view(1, -1, 1, 1)
    settings: list[tuple[str, Any, Any]] = []  # (sweep, value, transform of a pixel batch)
    for s in shifts:
        for name, (dy, dx) in DIRECTIONS.items():
            settings.append(("translation", (s, name), lambda u, s=s, dy=dy, dx=dx: shift(u, s * dy, s * dx,
                                                                                            shift_mode)))
            if s == 0:  # the same in every direction
                break
    settings += [("rotation", a, lambda u, a=a: rotate(u, a)) for a in angles]
    settings += [("scale", r, lambda u, r=r: rescale(u, r)) for r in scales]

    tallies = [_Tally() for _ in settings]
    reference = _Tally()
    dev = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for start in range(0, num_images, batch_size):
                x, y = images[start:start + batch_size], labels[start:start + batch_size].to(dev)
                logits = net(x.to(dev))
                ref_prob = F.softmax(logits.double(), -1)
                reference.add(logits, y, ref_prob)
                u = x * std + mean  # back to [0, 1] pixels, where zero is black
                for (_, _, transform), tally in zip(settings, tallies, strict=True):
                    v = transform(u)
                    # An identity setting returns u itself: the model would see exactly x again, so its
                    # logits are the reference's (the same batch through the same kernels) and not recomputed.
                    # Otherwise x + (T(u) - u) / std is (T(u) - mean) / std.
                    tally.add(logits if v is u else net((x + (v - u) / std).to(dev)), y, ref_prob)
    finally:
        net.train(was_training)

    record = InvarianceRecord(source=source, num_images=num_images, input_size=list(images.shape[1:]),
                              shift_mode=shift_mode, data=describe_data(bundle),
                              top1=reference.metrics()["top1"])
    by_shift: dict[int, dict[str, _Tally]] = {}
    for (sweep, v, _), t in zip(settings, tallies, strict=True):
        if sweep == "translation":
            by_shift.setdefault(v[0], {})[v[1]] = t
    for s, parts in by_shift.items():
        total = _Tally()
        for t in parts.values():
            total += t
        record.translation.append({"shift": s, **total.metrics(),
                                   "directions": {d: t.metrics()["consistency"] for d, t in parts.items()}})
    for (sweep, v, _), t in zip(settings, tallies, strict=True):
        if sweep == "rotation":
            record.rotation.append({"angle": v, **t.metrics()})
        elif sweep == "scale":
            record.scale.append({"ratio": v, **t.metrics()})
    record.figures["curves"] = curves(record)
    return record


def curves(*records: InvarianceRecord) -> Figure:
    """Consistency, top-1 and soft CE (rows) against shift, angle and crop ratio (columns), one line per
    record: pass several models' records to compare them."""
    sweeps = [("translation", "shift", "shift (px)"), ("rotation", "angle", "rotation (degrees)"),
              ("scale", "ratio", "crop ratio")]
    metrics = [("consistency", "consistency (%)"), ("top1", "top-1 (%)"), ("soft_ce", "soft CE")]
    fig = Figure(figsize=(12, 9))
    axes = fig.subplots(3, 3, squeeze=False)
    for rec in records:
        label = str(rec.source.get("model", "model"))
        for j, (name, key, _) in enumerate(sweeps):
            rows = getattr(rec, name)
            for i, (metric, _) in enumerate(metrics):
                axes[i, j].plot([r[key] for r in rows], [r[metric] for r in rows], marker="o", ms=3, label=label)
    for j, (name, _, xlabel) in enumerate(sweeps):
        axes[0, j].set_title(name, fontsize=10)
        axes[-1, j].set_xlabel(xlabel)
        for i, (_, ylabel) in enumerate(metrics):
            axes[i, j].grid(alpha=0.3)
            if j == 0:
                axes[i, j].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    first = records[0]
    fig.suptitle(f"invariance on {first.num_images} images of {first.input_size[-1]} px (shifts: "
                 f"{first.shift_mode}, 8 directions); soft CE to the untransformed prediction", fontsize=10)
    return fig


# ---- mixerlab analyze invariance ------------------------------------------------------------------------

def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-images", type=int, default=100, help="eval images (a stratified subset; default 100)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--shifts", type=int, nargs="*", default=None,
                   help="shifts in pixels (default: 0..64 step 4 scaled from 224 px to the input size)")
    p.add_argument("--angles", type=float, nargs="*", default=list(DEFAULT_ANGLES),
                   help="rotation angles in degrees (default 0..90 step 5)")
    p.add_argument("--scales", type=float, nargs="*", default=list(DEFAULT_SCALES),
                   help="crop ratios (default 0.25..2 step 0.125)")
    p.add_argument("--shift-mode", default="pad", choices=SHIFT_MODES)
    p.add_argument("--data", default=None, help="dataset (default: the run's, else fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="dataset directory (cifar, imagefolder)")


def _run(args: argparse.Namespace) -> InvarianceRecord:
    model, overrides = cli_model(args)
    return invariance(model, cli_data(args), shifts=args.shifts, angles=args.angles, scales=args.scales,
                      num_images=args.num_images, batch_size=args.batch_size, shift_mode=args.shift_mode,
                      weights=args.weights, **overrides)


def _table(record: Record) -> str:
    assert isinstance(record, InvarianceRecord)
    lines = [f"{'sweep':<12} {'setting':>8} {'top-1 %':>8} {'consist. %':>10} {'soft CE':>8}", "-" * 50]
    for name, key in (("translation", "shift"), ("rotation", "angle"), ("scale", "ratio")):
        for r in getattr(record, name):
            lines.append(f"{name:<12} {r[key]:>8g} {r['top1']:>8.2f} {r['consistency']:>10.2f} {r['soft_ce']:>8.4f}")
    lines.append(f"untransformed top-1 {record.top1:.2f}% on {record.num_images} images; consistency: % predicted "
                 f"as on the untransformed image; shifts ({record.shift_mode}) averaged over 8 directions")
    return "\n".join(lines)


register(AnalysisCommand("invariance", "translation / rotation / scale invariance (STM-Eval protocol, SPEC 8.6)",
                         _configure, _run, _table))
