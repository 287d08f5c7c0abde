"""Spatial-reduction attention (Wang et al., 2021, "Pyramid Vision Transformer", PVT v1), as used by
STM-Evaluation's U-PVT (Wang et al., 2022).

Global attention whose keys and values come from a coarser map. For a grid ``x`` of shape
``(B, H, W, C)``, h heads of width d = C / h and reduction ratio ``r = sr_ratios[stage]``:

    q = x W_q + b_q                                    (B, h, H*W, d)
    x_r = LN(Conv_{r x r, stride r}(x))  if r > 1      (B, ceil(H/r) * ceil(W/r), C)
    x_r = x                              if r = 1
    k, v = split(x_r W_kv + b_kv)                      first C channels k, next C v
    out = act(q k^T / sqrt(d)) v W_o + b_o

Padding: when r does not divide the map, the map is zero-padded at the bottom / right to a
multiple of r before the reduction conv (PVT would drop the remainder), so every token reaches a
key; no key is made of padding alone (padding < r), hence none needs masking. At 224 px the
U-PVT maps 56/28/14/7 with r = 8/4/2/1 need no padding.

Absolute position embedding (PVT): the first block of each stage (``ctx.index == 0``) owns a
learnable table ``pos_embed`` of shape ``(1, H0, W0, C)`` at the stage grid ``ctx.resolution``
(truncated normal, std .02), resampled bicubically (antialiased when shrinking; timm's
``resample_abs_pos_embed_nhwc``) when the runtime map differs. STM-Eval's
``PvtBlock`` adds it to the *residual stream* before ``norm1`` (``x = x + p`` then the usual
two residual branches), which a mixer cannot do from inside; hence ``pos_embed``:

* ``'stream'`` (default, STM-Eval exact): ``forward`` does not use the table; the block must call
  :meth:`add_pos_embed` on its input before both residual branches.
* ``'input'``: ``forward`` adds the table to the mixer's own input (after ``norm1``); works in
  any block but is not PVT's placement.
* ``'none'``: no position embedding.

The reduced keys are global, so the mixer breaks translation equivariance through the stride-r
reduction (for shifts that are not multiples of r) and, with the embedding, at every shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc
from torch import Tensor, nn

from ..config import ConfigError, check_choice
from .attend import attend, check_attn_act
from .base import Mixer, MixerContext

POS_EMBED_MODES = ("stream", "input", "none")


class SpatialReductionAttention(Mixer):
    def __init__(self, ctx: MixerContext, *, sr_ratios: Sequence[int] = (8, 4, 2, 1), attn_act: str = "softmax",
                 qkv_bias: bool = True, pos_embed: str = "stream", fused: bool = True) -> None:
        super().__init__()
        if ctx.stage >= len(sr_ratios):
            raise ConfigError(f"mixer.args.sr_ratios={list(sr_ratios)!r} is invalid: it has no entry for stage "
                              f"{ctx.stage} (one reduction ratio per stage is needed)")
        c = ctx.dim
        self.num_heads = ctx.num_heads
        self.sr_ratio = int(sr_ratios[ctx.stage])
        self.attn_act = attn_act
        self.fused = fused
        self.pos_mode = pos_embed
        self.q = nn.Linear(c, c, bias=qkv_bias)
        self.kv = nn.Linear(c, 2 * c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        if self.sr_ratio > 1:
            self.sr = nn.Conv2d(c, c, self.sr_ratio, stride=self.sr_ratio)
            self.norm = nn.LayerNorm(c)  # PyTorch's default eps 1e-5, as in PVT
        else:
            self.sr = self.norm = None
        if pos_embed != "none" and ctx.index == 0:
            self.pos_embed = nn.Parameter(torch.zeros(1, *ctx.resolution, c))
            self.init_weights()
        else:
            self.pos_embed = None

    def init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, stage: int, **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        check_choice("mixer.args.pos_embed", args.get("pos_embed", "stream"), POS_EMBED_MODES)
        sr = args.get("sr_ratios", (8, 4, 2, 1))
        if (not isinstance(sr, (list, tuple)) or not sr
                or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in sr)):
            raise ConfigError(f"mixer.args.sr_ratios={sr!r} is invalid: a list of positive integers, "
                              "one reduction ratio per stage (e.g. [8, 4, 2, 1])")
        if stage >= len(sr):
            raise ConfigError(f"mixer.args.sr_ratios={list(sr)!r} is invalid: it has no entry for stage {stage} "
                              "(one reduction ratio per stage is needed)")
        if dim % num_heads:
            raise ConfigError(f"heads={num_heads} is invalid for spatial-reduction attention at width {dim}: "
                              "the width must be a multiple of the number of heads")

    def add_pos_embed(self, x: Tensor) -> Tensor:
        """``x + pos_embed`` for a grid ``(B, H, W, C)`` (table resampled bicubically to H x W);
        ``x`` unchanged when this block owns no table."""
        if self.pos_embed is None:
            return x
        return x + resample_abs_pos_embed_nhwc(self.pos_embed, [x.shape[1], x.shape[2]])

    def forward(self, x: Tensor) -> Tensor:
        if self.pos_mode == "input":
            x = self.add_pos_embed(x)
        b, h, w, c = x.shape
        d = c // self.num_heads
        q = self.q(x).reshape(b, h * w, self.num_heads, d).transpose(1, 2)
        if self.sr is not None:
            r = self.sr_ratio
            xr = F.pad(x, (0, 0, 0, (-w) % r, 0, (-h) % r)).permute(0, 3, 1, 2)
            xr = self.norm(self.sr(xr).flatten(2).transpose(1, 2))
        else:
            xr = x.reshape(b, h * w, c)
        kv = self.kv(xr).reshape(b, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
        y = attend(q, kv[0], kv[1], act=self.attn_act, fused=self.fused)
        return self.proj(y.transpose(1, 2).reshape(b, h, w, c))
