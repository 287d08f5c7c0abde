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

It is applied as K^2 shifted multiply-accumulates into the output with a hand-written backward
(``_ShiftedTaps``), a chunk of samples at a time so the chunk stays in cache: no K^2-times larger
temporary (``F.unfold`` needs B C K^2 H W values), and 9x faster than unfolding at the tiny stage-1 shape.

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
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from ..layers import is_fx_tracing
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


# Elements (samples x channels x positions) per chunk of the CPU loop below: a chunk's input, output and
# gradients (~1 MB each at fp32) stay in cache across the K^2 taps.
_CHUNK_ELEMENTS = 1 << 18


def _chunks(x: Tensor) -> list[slice]:
    """Sample slices for the tap loop: on CPU, chunks of about ``_CHUNK_ELEMENTS``; elsewhere the whole batch
    (one kernel launch per tap)."""
    b, per_sample = x.shape[0], x[0].numel()
    step = b if x.device.type != "cpu" else max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


class _ShiftedTaps(torch.autograd.Function):
    """``y = sum_t W_t * shift_t(x)`` over the kh x kw taps, as in-place multiply-accumulates into ``y``.

    Hand-written because no library op applies per-position kernels (torchvision has none; ``F.unfold``
    materialises K^2 copies of the map, B C K^2 H W values, and autograd of a shifted-view sum stores one
    product per tap). Backward is the same loop: ``dx_pad[shift_t] += W_t * dy`` and
    ``dW_t = sum_{c in group} dy * shift_t(x)``. Measured at B 8, C 96, 56x56, K 7, 32 groups, 2 threads:
    forward + backward 0.17 s against 1.58 s for the unfold form (forward alone 0.03 vs 0.39 s)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:  # x (B, C, H, W), weight (B, G, kh, kw, H, W)
        b, c, h, w = x.shape
        g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
        # Row-major copies: the 1x1 convs hand over channels-last maps, whose per-tap slices would stride by C.
        x, weight = x.contiguous(), weight.to(x.dtype, memory_format=torch.contiguous_format)
        x_pad = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2)).unflatten(1, (g, c // g))  # (B, G, C/G, H', W')
        y = x.new_zeros(b, g, c // g, h, w)
        for s in _chunks(x):
            ys, xs, ws = y[s], x_pad[s], weight[s, :, None]
            for i in range(kh):
                for j in range(kw):
                    ys.addcmul_(xs[..., i:i + h, j:j + w], ws[:, :, :, i, j])
        ctx.save_for_backward(x_pad, weight)
        return y.flatten(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, Tensor]:
        x_pad, weight = ctx.saved_tensors
        kh, kw, h, w = weight.shape[2:]
        grad_y = grad_y.contiguous().unflatten(1, x_pad.shape[1:3])
        grad_x = torch.zeros_like(x_pad)
        grad_w = torch.empty_like(weight)
        for s in _chunks(grad_y):
            gys, xs, ws, gxs = grad_y[s], x_pad[s], weight[s, :, None], grad_x[s]
            for i in range(kh):
                for j in range(kw):
                    gxs[..., i:i + h, j:j + w].addcmul_(gys, ws[:, :, :, i, j])
                    grad_w[s, :, i, j] = (gys * xs[..., i:i + h, j:j + w]).sum(2)
        grad_x = grad_x[..., kh // 2:kh // 2 + h, kw // 2:kw // 2 + w].flatten(1, 2)
        return grad_x, grad_w


@register_notrace_function  # a torch.fx leaf: it crops by the map's size
def inhomogeneous_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Per-position depth-wise conv: ``x`` (B, C, H, W), ``weight`` (B or 1, G, K*K, H, W) with G | C,
    kernel taps in row-major order; channel c uses group c // (C / G). Only the taps that can reach the map
    are applied (:func:`reachable_taps`; the others meet padding only), each as one shifted multiply-accumulate
    (:class:`_ShiftedTaps`). Differentiable once (no double backward)."""
    k = math.isqrt(weight.shape[2])
    weight = weight.unflatten(2, (k, k)).movedim((2, 3), (-2, -1))  # (B, G, H, W, K, K)
    weight = reachable_taps(weight, x.shape[-2:]).movedim((-2, -1), (2, 3))  # (B, G, kh, kw, H, W)
    return _ShiftedTaps.apply(x, weight.expand(x.shape[0], *weight.shape[1:]))  # a batch-1 kernel broadcasts


# Maps at most this wide take the channels-last inference loop (:func:`taps_channels_last`).
_SHORT_ROWS = 12


@register_notrace_function  # a torch.fx leaf: it crops by the map's size
def taps_channels_last(x: Tensor, weight: Tensor) -> Tensor:
    """:func:`inhomogeneous_depthwise_conv` without autograd for short rows: ``x`` (B, C, H, W), ``weight``
    (K, K, B or 1, H, W, G) (taps first, as :meth:`IDynamicDWConv2d.kernel_channels_last` makes it).

    The row-major loop multiply-accumulates along one image row, W values; on a micro model's 8x8 .. 2x2 maps
    that is 2-8 values per inner loop and the overhead dominates. Channels last, a tap's window is one run of
    W x C input values against one contiguous block of kernel values (for groups of fewer than 8 channels
    the kernel is first expanded over each group's channels; from 8 it broadcasts). The taps alone, one
    thread, B 100, C 32, 8x8, 7x7 taps, 32 groups: 41 -> 23 ms; with the kernel generated in this layout,
    u_idynconv_micro inference at batch 100 went from 300 to 530 images/s. From 14-pixel rows the row-major
    loop is as fast or faster."""
    b, c, h, w = x.shape
    weight = reachable_taps(weight.movedim((0, 1), (-2, -1)), (h, w)).movedim((-2, -1), (0, 1))
    kh, kw, g = weight.shape[0], weight.shape[1], weight.shape[-1]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, kw // 2, kw // 2, kh // 2, kh // 2)).unflatten(-1, (g, c // g))
    weight = weight.to(x.dtype).expand(kh, kw, b, *weight.shape[3:]).unsqueeze(-1)  # a batch-1 kernel broadcasts
    y = x.new_empty(b, h, w, g, c // g)
    for s in _chunks(x):
        ws = weight[:, :, s]
        ws, ys = (ws.expand(*ws.shape[:-1], c // g) if c // g < 8 else ws).contiguous(), y[s].zero_()
        for i in range(kh):
            for j in range(kw):
                ys.addcmul_(xp[s, i:i + h, j:j + w], ws[i, j])
    return y.flatten(3).permute(0, 3, 1, 2)


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
        """``(B, C, H, W) -> (B, G, K*K, H, W)``, row-major."""
        z = F.relu(self.bn(self.conv1(x))).flatten(2)  # (B, C/r, HW)
        # conv2 as one batched matmul, whose output (the G K^2-fold larger tensor) is row-major: mkldnn writes a
        # 1x1 conv's output channels-last after the channels-last input (the tap loop would then stride by
        # G K^2) or, on a row-major input, at 60% of the matmul's speed.
        w2 = self.conv2.weight.flatten(1).expand(z.shape[0], -1, -1)
        w = torch.baddbmm(self.conv2.bias[:, None], w2, z)
        return w.unflatten(-1, x.shape[2:]).unflatten(1, (self.groups, self.kernel_size**2))

    def kernel_channels_last(self, x: Tensor) -> Tensor:
        """:meth:`kernel` without conv2's bias, taps and positions first: ``(B, C, H, W) -> (K, K, B, H, W, G)``.
        conv2 is one matmul per tap over the position-major map, so the output is already laid out for
        :func:`taps_channels_last` (each tap's kernel one contiguous B x H x W x G block; no relayout of the
        K^2 G-channel map). The bias, the same for every position, is applied as a static depth-wise conv."""
        k, g = self.kernel_size, self.groups
        z = F.relu(self.bn(self.conv1(x))).permute(0, 2, 3, 1)  # (B, H, W, C/r)
        w2 = self.conv2.weight.flatten(1).unflatten(0, (g, k * k)).permute(1, 2, 0)  # (K^2, C/r, G)
        return torch.matmul(z.reshape(-1, z.shape[-1]), w2).view(k, k, *z.shape[:3], g)

    def _channels_last_inference(self, x: Tensor) -> bool:
        """Whether forward takes :func:`taps_channels_last`: no autograd, CPU, short rows, not fx-traced."""
        if is_fx_tracing() or x.device.type != "cpu" or x.shape[-1] > _SHORT_ROWS:
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or self.conv2.weight.requires_grad))

    def bias_kernel(self, channels: int) -> Tensor:
        """conv2's bias as a static depth-wise kernel ``(C, 1, K, K)`` (channel c takes its group's taps)."""
        k, g = self.kernel_size, self.groups
        return self.conv2.bias.view(g, 1, k, k).repeat_interleave(channels // g, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self._channels_last_inference(x):
            y = taps_channels_last(x, self.kernel_channels_last(x))
            return y + F.conv2d(x, self.bias_kernel(x.shape[1]), padding=self.kernel_size // 2, groups=x.shape[1])
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
