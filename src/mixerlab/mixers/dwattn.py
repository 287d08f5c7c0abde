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
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, check_choice
from .attend import attend, check_attn_act
from .base import Mixer, MixerContext
from .halo import exclude_keys
from .window import WINDOW_FITS, fit_window, window_partition, window_reverse


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
        self.qk = nn.Conv2d(c, 2 * c, 1, groups=c, bias=qkv_bias) if dw_proj else nn.Linear(c, 2 * c, bias=qkv_bias)
        self.v = nn.Linear(c, c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        self._masks: dict[tuple[Any, ...], Tensor] = {}

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
        return self.qk(x).chunk(2, dim=-1)

    def _mask(self, h: int, w: int, wh: int, ww: int, device: torch.device) -> Tensor:
        """``(nW, 1, 1, wh*ww)``: which keys of each window lie on the map."""
        key = (h, w, wh, ww, device)
        if key not in self._masks:
            valid = F.pad(torch.ones(1, h, w, 1, device=device), (0, 0, 0, (-w) % ww, 0, (-h) % wh))
            self._masks[key] = window_partition(valid, wh, ww).reshape(-1, 1, 1, wh * ww) > 0
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        q, k = self._qk(x)
        qkv = torch.cat([q, k, self.v(x)], dim=-1)  # (B, H, W, 3C)
        if self.window_size is None:
            t = qkv.reshape(b, h * w, 3, c).permute(2, 0, 3, 1).unsqueeze(-1)  # (3, B, C, N, 1)
            y = attend(t[0], t[1], t[2], act=self.attn_act, scale=1.0, fused=self.fused)
            return self.proj(y.squeeze(-1).transpose(1, 2).reshape(b, h, w, c))
        wh, ww = (fit_window(r, self.window_size, self.window_fit)[0] for r in (h, w))
        ph, pw = (-h) % wh, (-w) % ww
        win = window_partition(F.pad(qkv, (0, 0, 0, pw, 0, ph)), wh, ww)  # (B*nW, n, 3C)
        bn, n, _ = win.shape
        t = win.reshape(bn, n, 3, c).permute(2, 0, 3, 1).unsqueeze(-1)  # (3, B*nW, C, n, 1)
        bias = mask = None
        if ph or pw:
            m = self._mask(h, w, wh, ww, x.device).unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(bn, 1, 1, n)
            bias, mask = exclude_keys(self.attn_act, m, None, t.dtype)
        y = attend(t[0], t[1], t[2], act=self.attn_act, scale=1.0, bias=bias, mask=mask, fused=self.fused)
        y = window_reverse(y.squeeze(-1).transpose(1, 2), wh, ww, h + ph, w + pw)[:, :h, :w]
        return self.proj(y)
