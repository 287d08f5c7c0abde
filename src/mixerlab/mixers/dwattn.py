"""Depth-wise self-attention (Zhou, Loy, Dai, 2023, "Interpret Vision Transformers as ConvNets
with Dynamic Convolutions", study 2): attention in which every channel is its own head, the way
a depth-wise convolution gives every channel its own kernel.

For a grid ``x`` of shape ``(B, H, W, C)`` and a channel c (head dim 1, so the scale
``d^-1/2`` is 1):

    q = x W_q + b_q,  k = x W_k + b_k     dense Linear (default), or with ``dw_proj=True``
                                          per-channel: q_c = a_c x_c + b_c, k_c = a'_c x_c + b'_c
                                          (a depth-wise 1x1 conv; output channels 2c -> q_c, 2c+1 -> k_c)
    v = x W_v + b_v                       dense Linear
    L_c[i, j] = q_{i,c} k_{j,c}           a rank-1 N x N kernel per channel
    y_{i,c} = sum_j act(L_c)[i, j] v_{j,c}
    out = y W_o + b_o

``act`` is any activation of :mod:`mixerlab.mixers.attend`. ``window_size=None`` lets j range over
the whole map; an integer restricts i and j to the same non-overlapping ``w x w`` window (no
shift). The window shrinks to the map along a side not larger than it; on a larger map that w does
not divide, ``window_fit`` picks equal windows (``"balance"``, default) or keeps w (``"pad"``), as
in :mod:`mixerlab.mixers.window`. The map is then
zero-padded at the bottom / right to a multiple of the window and padded keys are masked out exactly
(softmax logit -inf: the unscaled head-dim-1 logits are unbounded, so Swin's -100 would not do;
excluded from N for the other activations), so the output never depends on the padding; padded
queries are cropped. Unlike the dense heads of
standard attention, the dynamic kernel is *not* shared across channels.

Cost: the kernel has C * N^2 entries per sample (h = C heads). Softmax uses the fused SDPA path;
the other activations materialise ``(B, C, N, N)`` logits, which at global scope on a 56 x 56 map
is C / 3 times the memory of 3-head attention: use windows there.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..errors import ConfigError, check_choice
from ..linear import Linear
from .attend import AttentionInputs, attend, attention_weights, check_attn_act, scatter_dense
from .base import Mixer, MixerContext
from .window import (
    WINDOW_FITS,
    crop_like,
    fit_window,
    pad_to_multiple,
    window_keys_on_map,
    window_merge,
    window_partition,
    window_positions,
)


def _window(x: Tensor, window_size: int | None, fit: str) -> tuple[int, int]:
    """The window used on the map of ``x``: the map itself when global, else fitted per side."""
    if window_size is None:
        return x.shape[1], x.shape[2]
    return fit_window(x.shape[1], window_size, fit)[0], fit_window(x.shape[2], window_size, fit)[0]


# The window depends on the runtime map, so everything that uses it is a torch.fx leaf (see mixers.window).

@register_notrace_function
def dw_partition(x: Tensor, window_size: int | None, fit: str) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, n, C)``: windows of the zero-padded map (one window when global)."""
    wh, ww = _window(x, window_size, fit)
    return window_partition(pad_to_multiple(x, wh, ww), wh, ww)


@register_notrace_function
def dw_merge(y: Tensor, like: Tensor, window_size: int | None, fit: str) -> Tensor:
    """Inverse of :func:`dw_partition` for the map of ``like``, padding cropped."""
    return crop_like(window_merge(y, like, *_window(like, window_size, fit)), like)


@register_notrace_function
def dw_keys_on_map(x: Tensor, window_size: int | None, fit: str) -> Tensor:
    """``(nW, 1, 1, n)``: which tokens of each window lie on the map of ``x``."""
    return window_keys_on_map(x, _window(x, window_size, fit), (0, 0))


@register_notrace_function
def dw_positions(x: Tensor, window_size: int | None, fit: str) -> Tensor:
    """``(nW, n)`` map positions of each window's tokens, ``H * W`` on padding."""
    return window_positions(x, _window(x, window_size, fit), (0, 0))


class DepthwiseAttention(Mixer):
    def __init__(self, ctx: MixerContext, *, window_size: int | None = None, dw_proj: bool = False,
                 attn_act: str = "softmax", qkv_bias: bool = True, fused: bool = True,
                 window_fit: str = "balance") -> None:
        super().__init__()
        c = ctx.dim
        self.window_size = window_size
        self.window_fit = window_fit
        self.attn_act = attn_act
        self.fused = fused
        # Depth-wise: one weight (and bias) per channel for q and one for k.
        self.qk = nn.Conv2d(c, 2 * c, 1, groups=c, bias=qkv_bias) if dw_proj else Linear(c, 2 * c, bias=qkv_bias)
        self.v = Linear(c, c, bias=qkv_bias)
        self.proj = Linear(c, c)

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        ws = args.get("window_size")
        if ws is not None and (not isinstance(ws, int) or isinstance(ws, bool) or ws < 1):
            raise ConfigError(f"mixer.args.window_size={ws!r} is invalid: null (global) or a positive integer")
        check_choice("mixer.args.window_fit", args.get("window_fit", "balance"), WINDOW_FITS)

    def _qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.qk, nn.Conv2d):
            qk = self.qk(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            qk = qk.unflatten(-1, (-1, 2))  # (B, H, W, C, 2): grouped-conv output order
            return qk[..., 0], qk[..., 1]
        qk = self.qk(x)
        return qk[..., :self.v.out_features], qk[..., self.v.out_features:]

    def _inputs(self, x: Tensor) -> AttentionInputs:
        """q, k, v ``(B, nW * C, n, 1)`` (every channel a head; windows folded into the head axis,
        window-major) and, with windows, the padding mask ``(1, nW * C, 1, n)`` (4-D for SDPA's fused kernel)."""
        c = self.v.out_features
        q, k = self._qk(x)
        qkv = dw_partition(torch.cat([q, k, self.v(x)], dim=-1), self.window_size, self.window_fit)
        t = qkv.unflatten(0, (x.shape[0], -1)).unflatten(-1, (3, c)).permute(3, 0, 1, 4, 2).flatten(2, 3)
        mask = None
        if self.window_size is not None:  # a global map has no padding
            mask = dw_keys_on_map(x, self.window_size, self.window_fit).expand(-1, c, -1, -1).flatten(0, 1)[None]
        return AttentionInputs(t[0, ..., None], t[1, ..., None], t[2, ..., None], mask=mask)

    def forward(self, x: Tensor) -> Tensor:
        t = self._inputs(x)
        y = attend(t.q, t.k, t.v, act=self.attn_act, scale=1.0, mask=t.mask, fused=self.fused)  # (B, nW * C, n, 1)
        y = y.squeeze(-1).unflatten(1, (-1, self.v.out_features)).transpose(2, 3).flatten(0, 1)  # (B * nW, n, C)
        return self.proj(dw_merge(y, x, self.window_size, self.window_fit))

    def aggregation_weights(self, x: Tensor) -> Tensor:
        """Post-activation weights ``A`` of shape ``(B, C, H*W, H*W)`` (explicit path, same function as forward).

        ``A[b, c, i, j]`` is the weight channel ``c`` (its own head) gives map position ``j`` for query
        position ``i`` (positions row-major, ``i = row * W + col``): nonzero only for keys in i's window (all
        keys when global); padded keys have weight exactly 0 and are dropped. With ``v = x W_v + b_v`` at
        map positions ``(B, H*W, C)``, ``forward(x) = proj(y)`` with ``y[b, i, c] = sum_j A[b, c, i, j] v[b, j, c]``.
        """
        t = self._inputs(x)
        a = attention_weights(t.q, t.k, act=self.attn_act, scale=1.0, mask=t.mask)  # (B, nW * C, n, n)
        pos = dw_positions(x, self.window_size, self.window_fit)
        return scatter_dense(a.unflatten(1, (-1, self.v.out_features)).transpose(1, 2), pos, pos,
                             x.shape[1] * x.shape[2])
