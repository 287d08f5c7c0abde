"""Dynamic depth-wise convolutions (Han et al., 2022, "On the Connection between Local Attention
and Dynamic Depth-wise Convolution"; DWNet).

``dynconv`` -- homogeneous dynamic depth-wise conv: one K x K kernel per sample and channel,
predicted from the globally pooled input and shared by all positions::

    W = Conv1x1_{d/r -> d K^2, bias}(ReLU(BN(Conv1x1_{d -> d/r, no bias}(GAP(x)))))   (B, d, K, K)
    y[b, c] = W[b, c] * x[b, c] + bias[c]                 (* = 2-D correlation, zero padding K // 2)

All samples run in ONE grouped convolution over B*d groups: the batch is folded into the
channel axis, so a sample's kernel only ever touches its own channels (no Python loop).
(DWNet's released ``DWBlock`` overwrites its dynamic conv with a static one in an ``else``
branch; mixerlab follows the paper: dynamic DWNet-T has 51.1M parameters, published 51M.)

``idynconv`` -- inhomogeneous dynamic depth-wise conv: a different K x K kernel at every
position, predicted position-wise (1x1 convs, no pooling) and shared by the d/G channels of
each of G groups, no bias::

    W = Conv1x1_{d/r -> G K^2}(ReLU(BN(Conv1x1_{d -> d/r}(x))))                       (B, G, K, K, H, W)
    y[b, c, h, w] = sum_{i,j} W[b, g(c), i, j, h, w] * x_pad[b, c, h + i, w + j],   g(c) = c // (d/G)

It is applied with ``F.unfold`` (all K^2 neighbours of every position at once, then a weighted
sum over the K^2 taps): forward+backward of the ``idynconv`` mixer at B=8, C=96, 56x56, K=7,
G=32 on CPU took about 5 s against 14 s for a sum of K^2 weighted shifted views, at the price
of a K^2-times larger temporary (B C K^2 H W values).

DWNet's released i-dynamic configs pass the Swin heads ([3, 6, 12, 24] for T, [4, 8, 16, 32]
for B) as *channels per group*, so G = d / heads = 32 groups at every stage; ``groups=None``
reproduces that (G = d // num_heads). Attention shares a kernel within a head, i.e. the
opposite split (G = heads): pass ``groups=num_heads`` for that reading.

Both mixers take ``proj``: with ``proj=True`` (default, the U-* slot of U-ConvNeXt's mixer, see
``conv.DWConv``) the dynamic conv sits between two 1x1 convs with bias; the kernel generator sees
the output of the first. Input and output are ``(B, H, W, C)`` at any resolution. The BatchNorm of
the kernel generator normalises over the batch in training mode (as in DWNet), so in training mode
a sample's kernel depends on batch statistics (and ``dynconv`` needs B > 1 there, as BN of a
pooled vector does); in eval mode samples are independent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Mixer, MixerContext, check_reduction, odd_kernel, positive_int


def reachable_taps(weight: Tensor, grid: tuple[int, int]) -> Tensor:
    """The centre ``min(K, 2H - 1) x min(K, 2W - 1)`` taps of odd ``(..., K, K)`` kernels on an ``H x W`` map
    (zero padding): the others only ever meet padding, so dropping them changes no output and no gradient
    (theirs is exactly zero either way)."""
    k = weight.shape[-1]
    kh, kw = min(k, 2 * grid[0] - 1), min(k, 2 * grid[1] - 1)
    if (kh, kw) == (k, k):
        return weight
    return weight[..., (k - kh) // 2:(k + kh) // 2, (k - kw) // 2:(k + kw) // 2]


@register_notrace_function  # a torch.fx leaf: it branches on the map's size
def dynamic_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Per-sample depth-wise conv: ``x`` (B, C, H, W), ``weight`` (B, C, K, K) with K odd, ``bias`` (C,).

    One grouped convolution over B*C groups: the batch is folded into the channels as ``(1, B*C, H, W)``,
    so a sample's kernel only ever touches its own channels (no Python loop). Only the taps that can reach
    an output are convolved (:func:`reachable_taps`), and a 1x1 map is a product with the centre tap.
    Measured forward+backward, one thread, at u_dynconv_micro's 32x32 stage shapes (batch 128; C, H =
    32, 8 / 64, 4 / 128, 2 / 256, 1): 10 / 10 / 5 / <1 ms, against 150 / 210 / 69 / 354 ms for the full 7x7
    kernel over a channels-last fold, which made the whole model's train step 6.6 s; at B 8, C 96, 56x56 the
    two layouts are within 10% (99 vs 89 ms)."""
    b, c, h, w = x.shape
    weight = reachable_taps(weight, (h, w))
    if weight.shape[-2] == 1 and weight.shape[-1] == 1:
        y = x * weight
    else:
        y = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * c, 1, weight.shape[-2], weight.shape[-1]),
                     padding="same", groups=b * c).view(b, c, h, w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


@register_notrace_function  # a torch.fx leaf: it crops by the map's size
def inhomogeneous_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Per-position depth-wise conv: ``x`` (B, C, H, W), ``weight`` (B, G, K*K, H, W) with G | C,
    kernel taps in row-major order; channel c uses group c // (C / G). Only the taps that can reach the map
    are unfolded (:func:`reachable_taps`; the others meet padding only)."""
    _, g, kk, h, w = weight.shape
    k = math.isqrt(kk)
    weight = reachable_taps(weight.unflatten(2, (k, k)).movedim((2, 3), (-2, -1)), (h, w))  # (B, G, H, W, kh, kw)
    kh, kw = weight.shape[-2], weight.shape[-1]
    cols = F.unfold(x, (kh, kw), padding=(kh // 2, kw // 2)).unflatten(1, (g, -1, kh * kw))  # (B, G, C/G, kh*kw, HW)
    taps = weight.flatten(-2).flatten(2, 3).transpose(-1, -2).unsqueeze(2)  # (B, G, 1, kh*kw, HW)
    return (cols * taps).sum(3).flatten(1, 2).view_as(x)


class DynamicDWConv2d(nn.Module):
    """Homogeneous dynamic depth-wise conv on NCHW maps (kernel generator + static bias)."""

    def __init__(self, dim: int, kernel_size: int = 7, reduction: int = 4) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        hidden = dim // reduction
        self.conv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, dim * kernel_size**2, 1)
        self.bias = nn.Parameter(torch.zeros(dim))

    def kernel(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, K, K)``."""
        z = F.relu(self.bn(self.conv1(x.mean((2, 3), keepdim=True))))
        return self.conv2(z).view(-1, self.dim, self.kernel_size, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return dynamic_depthwise_conv(x, self.kernel(x), self.bias)


class IDynamicDWConv2d(nn.Module):
    """Inhomogeneous dynamic depth-wise conv on NCHW maps (position-wise kernel generator, no bias)."""

    def __init__(self, dim: int, kernel_size: int = 7, groups: int = 1, reduction: int = 4) -> None:
        super().__init__()
        self.kernel_size, self.groups = kernel_size, groups
        hidden = dim // reduction
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, groups * kernel_size**2, 1)

    def kernel(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, G, K*K, H, W)``."""
        return self.conv2(F.relu(self.bn(self.conv1(x)))).unflatten(1, (self.groups, self.kernel_size**2))

    def forward(self, x: Tensor) -> Tensor:
        return inhomogeneous_depthwise_conv(x, self.kernel(x))

    def elementwise_macs(self, out: Tensor) -> int:
        """MACs of the per-position kernels, applied as elementwise products the op counter cannot see."""
        return out.numel() * self.kernel_size**2


def idynamic_groups(groups: int | None, dim: int, num_heads: int) -> int:
    """``None`` -> DWNet's released split, ``dim // num_heads`` groups (32 in every DWNet stage)."""
    return dim // num_heads if groups is None else groups


def check_dynamic_args(args: dict[str, Any], *, dim: int, num_heads: int, inhomogeneous: bool) -> None:
    """Shared value checks of the dynamic convs (also used by ``conv.DWNetConv``)."""
    odd_kernel("kernel_size", args.get("kernel_size", 7))
    check_reduction(args, dim, "the kernel generator's")
    if not inhomogeneous:
        return
    groups = args.get("groups")
    if groups is None:
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"mixer.args.groups=None is invalid for width {dim} and {num_heads} heads: "
                              "the default (dim // num_heads groups) needs heads dividing the width; "
                              "pass groups explicitly (a divisor of the width)")
        return
    positive_int("groups", groups)
    if dim % groups:
        divisors = [g for g in range(1, dim + 1) if dim % g == 0]
        raise ConfigError(f"mixer.args.groups={groups!r} is invalid for width {dim}: "
                          f"groups must divide the channels, allowed are {divisors}")


class _Projected(Mixer):
    """Optional Conv1x1 (bias) before and after a depth-wise operator on NCHW maps."""

    def _build(self, d: int, op: nn.Module, proj: bool) -> None:
        self.pw1 = nn.Conv2d(d, d, 1) if proj else nn.Identity()
        self.dw = op
        self.pw2 = nn.Conv2d(d, d, 1) if proj else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.pw2(self.dw(self.pw1(x))).permute(0, 2, 3, 1)


class DynamicDWConv(_Projected):
    def __init__(self, ctx: MixerContext, *, kernel_size: int = 7, reduction: int = 4, proj: bool = True) -> None:
        super().__init__()
        self._build(ctx.dim, DynamicDWConv2d(ctx.dim, kernel_size, reduction), proj)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        check_dynamic_args(args, dim=dim, num_heads=num_heads, inhomogeneous=False)


class IDynamicDWConv(_Projected):
    def __init__(self, ctx: MixerContext, *, kernel_size: int = 7, groups: int | None = None,
                 reduction: int = 4, proj: bool = True) -> None:
        super().__init__()
        g = idynamic_groups(groups, ctx.dim, ctx.num_heads)
        self._build(ctx.dim, IDynamicDWConv2d(ctx.dim, kernel_size, g, reduction), proj)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        check_dynamic_args(args, dim=dim, num_heads=num_heads, inhomogeneous=True)
