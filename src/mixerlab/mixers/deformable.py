"""Deformable aggregation: DCNv3 as used by STM-Evaluation (Wang et al., 2022, "Demystify Transformers &
Convolutions in Modern Image Deep Networks"; operator of InternImage, Wang et al., 2023).

For a grid ``x`` of shape ``(B, H, W, C)``, ``g`` groups of ``D = C / g`` channels and ``P = K^2`` points::

    q      = GELU(LN(DWConv_kq(x)))                          query path, (B, H, W, C)
    v      = x W_v + b_v                                      value,      (B, H, W, C)
    dp     = q W_o + b_o   -> (B, H, W, g, P, 2)              offsets in pixels, (dx, dy)
    m      = softmax_P(q W_m + b_m)  -> (B, H, W, g, P)       one weight per point, summing to 1 per group
    y(p0)_c = sum_k m(p0)_{g(c),k} * v~(p0 + s * (p_k + dp(p0)_{g(c),k}))_c
    out    = y W_out + b_out

``v~`` is bilinear interpolation of ``v`` with zeros outside the map (so the map size is kept at any
resolution and border positions aggregate fewer real values), ``p_k`` the points of a K x K grid with
spacing ``dilation`` and ``s = offset_scale``. As in STM-Evaluation (and InternImage) ``s`` scales the
regular grid *and* the learned offsets. Point ``k`` sits at ``(dx, dy) = ((k // K - K // 2), (k % K - K // 2))
* dilation``: STM-Evaluation builds its grid with the two axes swapped, and keeping that order lets its
``sampling_offsets`` / ``attention_weights`` checkpoints map one to one. Offsets and point weights are
zero-initialised (:meth:`DeformableConv.init_weights`), so training starts from a uniform K x K average.
(STM-Evaluation writes that zero init but its MetaArch then re-initialises every Linear with a truncated
normal; ``zero_init=False`` reproduces the init its models actually trained from.)

A group shares its offsets and point weights across its D channels; the kernel is dynamic (computed from the
input) and differs per position. Sampling uses ``F.grid_sample`` once for all points (pure PyTorch, CPU and
GPU, differentiable in values, offsets and weights).

STM-Evaluation options not offered (its named models never use them): several dilation rates split over the
groups, a value width ratio other than 1, unpadded sampling and the learnable grid-scale ("alpha") variants.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..errors import ConfigError
from ..linear import Linear
from .base import Mixer, MixerContext, odd_kernel, positive_int


def sampling_points(kernel_size: int, dilation: int = 1) -> Tensor:
    """``(P, 2)`` regular-grid displacements ``(dx, dy)`` in pixels, in STM-Evaluation's point order."""
    r = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    a, b = torch.meshgrid(r, r, indexing="ij")
    return torch.stack((a, b), -1).reshape(-1, 2) * dilation


@register_notrace_function
def base_grid(value: Tensor, points: Tensor, offset_scale: float) -> Tensor:
    """``(P, H, W, 2)`` regular-grid sampling points of every position of ``value`` ``(B, H, W, C)`` in
    ``grid_sample`` coordinates (``align_corners=False`` puts pixel centre u at ``(2u + 1) / size - 1``)."""
    dt = torch.promote_types(value.dtype, torch.float32)
    h, w = value.shape[1], value.shape[2]
    ys, xs = torch.meshgrid(torch.arange(h, device=value.device, dtype=dt),
                            torch.arange(w, device=value.device, dtype=dt), indexing="ij")
    base = torch.stack((xs, ys), -1) + offset_scale * points.to(dt)[:, None, None, :]
    return (2 * base + 1) / torch.tensor([w, h], device=value.device, dtype=dt) - 1


@register_notrace_function
def offset_unit(value: Tensor, offset_scale: float) -> Tensor:
    """``(2,)`` size in ``grid_sample`` coordinates of one pixel of offset ``(dx, dy)``, scaled by ``s``."""
    dt = torch.promote_types(value.dtype, torch.float32)
    return 2 * offset_scale / torch.tensor([value.shape[2], value.shape[1]], device=value.device, dtype=dt)


def deform_aggregate(value: Tensor, offsets: Tensor, weights: Tensor, points: Tensor,
                     offset_scale: float = 1.0) -> Tensor:
    """Weighted bilinear sampling at deformed grid points.

    value ``(B, H, W, C)``; offsets ``(B, H, W, g, P, 2)`` as (dx, dy) pixels; weights ``(B, H, W, g, P)``;
    points ``(P, 2)`` as from :func:`sampling_points`. Returns ``(B, H, W, C)`` with
    ``y[b, i, j, c] = sum_k weights[b, i, j, g(c), k] * v~(j + s (px_k + dx), i + s (py_k + dy))``.
    """
    g = weights.shape[-2]
    # Coordinates need at least fp32: in half precision a position near 56 is off by up to 1/4 pixel.
    grid0 = base_grid(value, points, offset_scale)  # (P, H, W, 2)
    v = value.to(grid0.dtype).unflatten(-1, (g, -1)).permute(0, 3, 4, 1, 2).flatten(0, 1)  # (B*g, D, H, W)
    # Points lead the spatial dims of the sampling grid (grid (B*g, P, H*W, 2)): grid_sample's CPU kernel
    # vectorises along the last output dim, so H*W there is faster than P (measured ~10% on 56x56).
    grid = grid0 + offsets.to(grid0.dtype).permute(0, 3, 4, 1, 2, 5) * offset_unit(value, offset_scale)
    sampled = F.grid_sample(v, grid.flatten(0, 1).flatten(2, 3), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*g, D, P, H*W)
    m = weights.to(grid0.dtype).permute(0, 3, 4, 1, 2).flatten(0, 1).flatten(2).unsqueeze(1)  # (B*g, 1, P, H*W)
    y = (sampled * m).sum(2).unflatten(0, (-1, g)).permute(0, 3, 1, 2)  # (B, H*W, g, D)
    return y.reshape(value.shape).to(value.dtype)


class DeformableConv(Mixer):
    """DCNv3 token mixer; ``groups`` is one int, or None to use the model's heads (STM-Evaluation passes
    its groups as ``num_heads``, so the default follows the heads stage by stage). Per-stage values other
    than the heads go in per-stage mixer configs (``mixer=[...]``, one ``dcn`` per stage)."""

    def __init__(self, ctx: MixerContext, *, groups: int | None = None, kernel_size: int = 3,
                 dilation: int = 1, dw_kernel_size: int = 3, offset_scale: float = 1.0,
                 zero_init: bool = True) -> None:
        super().__init__()
        d = ctx.dim
        g = ctx.num_heads if groups is None else groups
        if d % g:
            raise ConfigError(f"mixer.args.groups={groups!r} is invalid: stage {ctx.stage} uses {g} groups, "
                              f"which must divide its width {d}")
        self.groups, self.offset_scale, self.zero_init = g, float(offset_scale), zero_init
        p = kernel_size * kernel_size
        self.dw_conv = nn.Conv2d(d, d, dw_kernel_size, padding=dw_kernel_size // 2, groups=d)
        self.dw_norm = nn.LayerNorm(d)  # PyTorch's default eps 1e-5, as STM-Evaluation's LayerNormProxy
        self.act = nn.GELU()
        self.sampling_offsets = Linear(d, g * p * 2)
        self.attention_weights = Linear(d, g * p)
        self.value_proj = Linear(d, d)
        self.output_proj = Linear(d, d)
        self.register_buffer("points", sampling_points(kernel_size, dilation), persistent=False)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, stage: int, **_: Any) -> None:
        odd_kernel("kernel_size", args.get("kernel_size", 3))
        odd_kernel("dw_kernel_size", args.get("dw_kernel_size", 3))
        positive_int("dilation", args.get("dilation", 1))
        s = args.get("offset_scale", 1.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ConfigError(f"mixer.args.offset_scale={s!r} is invalid: a positive number (1.0 in STM-Evaluation)")
        if not isinstance(args.get("zero_init", True), bool):
            raise ConfigError(f"mixer.args.zero_init={args['zero_init']!r} is invalid: true or false")
        groups = args.get("groups")
        if isinstance(groups, (list, tuple)):
            raise ConfigError(f"mixer.args.groups={groups!r} is invalid: one int; per-stage values go in "
                              "per-stage mixer configs: mixer=[...] (or null to use the model's heads)")
        if groups is None:
            if dim % num_heads:
                raise ConfigError(f"mixer.args.groups=None is invalid here: the heads ({num_heads}) used as "
                                  f"groups must divide the width {dim}")
            return
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or dim % groups:
            raise ConfigError(f"mixer.args.groups={groups!r} is invalid: a positive divisor of the width {dim} "
                              f"of stage {stage} (or null to use the model's heads)")

    def init_weights(self) -> None:
        # STM-Evaluation zero-initialises these two layers but its MetaArch then re-initialises every
        # Linear (trunc normal .02); zero_init=False keeps that (global) init.
        if self.zero_init:
            for layer in (self.sampling_offsets, self.attention_weights):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def offset_query(self, x: Tensor) -> Tensor:
        """The input of the offset and point-weight layers: depth-wise conv, LayerNorm, activation, ``(B, H, W, C)``."""
        return self.act(self.dw_norm(self.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)))

    def forward(self, x: Tensor) -> Tensor:
        g, p = self.groups, self.points.shape[0]
        q = self.offset_query(x)
        offsets = self.sampling_offsets(q).unflatten(-1, (g, p, 2))
        weights = self.attention_weights(q).unflatten(-1, (g, p)).softmax(-1)
        y = deform_aggregate(self.value_proj(x), offsets, weights, self.points, self.offset_scale)
        return self.output_proj(y)

    def elementwise_macs(self, out: Tensor) -> int:
        """MACs of weighting the P samples of every output element (elementwise products the op counter
        cannot see; the bilinear sampling itself is counted on ``grid_sampler_2d``)."""
        return out.numel() * self.points.shape[0]

