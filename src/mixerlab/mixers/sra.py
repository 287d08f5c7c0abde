"""Spatial-reduction attention (Wang et al., 2021, "Pyramid Vision Transformer", PVT v1), as used by
STM-Evaluation's U-PVT (Wang et al., 2022).

Global attention whose keys and values come from a coarser map. For a grid ``x`` of shape
``(B, H, W, C)``, h heads of width d = C / h and reduction ratio ``r = sr_ratio`` (one per mixer):

    q = x W_q + b_q                                    (B, h, H*W, d)
    x_r = LN(Conv_{r x r, stride r}(x))  if r > 1      (B, ceil(H/r) * ceil(W/r), C)
    x_r = x                              if r = 1
    k, v = split(x_r W_kv + b_kv)                      first C channels k, next C v
    out = act(q k^T / sqrt(d)) v W_o + b_o

Padding: when r does not divide the map, the map is zero-padded at the bottom / right to a
multiple of r before the reduction conv (PVT would drop the remainder), so every token reaches a
key; no key is made of padding alone (padding < r), hence none needs masking. PVT's ratios differ per
stage (8/4/2/1): the zoo's U-PVT gives them as per-stage mixer configs (``mixer=[...]``, one ``sra`` per
stage); at 224 px its maps 56/28/14/7 need no padding.

Absolute position embedding (PVT): the first block of each stage (``ctx.index == 0``) owns a
learnable table ``pos_embed`` of shape ``(1, H0, W0, C)`` at the stage grid ``ctx.resolution``
(truncated normal, std .02), resampled bicubically (antialiased when shrinking; timm's
``resample_abs_pos_embed_nhwc``) when the runtime map differs. STM-Eval's
``PvtBlock`` adds it to the *residual stream* before ``norm1`` (``x = x + p`` then the usual
two residual branches), which a mixer cannot do from inside; hence ``pos_embed``:

* ``'stream'`` (default, STM-Eval exact): ``forward`` does not use the table; the mixer's residual
  hook :meth:`stream` adds it, and every block calls that hook on its input before both branches.
* ``'input'``: ``forward`` adds the table to the mixer's own input (after ``norm1``); works in
  any block but is not PVT's placement.
* ``'none'``: no position embedding.

The reduced keys are global, so the mixer breaks translation equivariance through the stride-r
reduction (for shifts that are not multiples of r) and, with the embedding, at every shift.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import register_notrace_function, resample_abs_pos_embed_nhwc
from torch import Tensor, nn

from ..errors import ConfigError, check_choice, check_int, fail
from ..linear import Linear
from .attend import attend, attention_weights, check_attn_act, split_heads
from .base import Mixer, MixerContext
from .window import pad_to_multiple

POS_EMBED_MODES = ("stream", "input", "none")
PER_STAGE_HINT = "one int; per-stage values go in per-stage mixer configs: mixer=[...]"


@register_notrace_function
def resample_like(table: Tensor, x: Tensor) -> Tensor:
    """``table`` ``(1, H0, W0, C)`` resampled to the grid of ``x`` (a torch.fx leaf: timm's resampling
    branches on the sizes)."""
    return resample_abs_pos_embed_nhwc(table, [x.shape[1], x.shape[2]])


# Also a leaf for any tracer: blocks call :meth:`stream` before this mixer's forward, and timm's
# autowrap only patches the functions of modules whose forward the trace has entered.
torch.fx.wrap("resample_like")


class SpatialReductionAttention(Mixer):
    """Spatial-reduction attention with one reduction ratio ``sr_ratio`` (keys and values from an
    ``sr_ratio``-times coarser map; 1: plain global attention).

    PVT's per-stage ratios 8/4/2/1 are given as per-stage mixer configs in the zoo (``u_pvt_*``:
    ``mixer=[MixerConfig("sra", {"sr_ratio": r}) for r in (8, 4, 2, 1)]``); the default 2 is for a mixer
    built alone or shared by every stage (PVT's value at its third stage).
    """

    def __init__(self, ctx: MixerContext, *, sr_ratio: int = 2, attn_act: str = "softmax",
                 qkv_bias: bool = True, pos_embed: str = "stream", fused: bool = True) -> None:
        super().__init__()
        c = ctx.dim
        self.num_heads = ctx.num_heads
        self.head_dim = c // ctx.num_heads
        self.sr_ratio = int(sr_ratio)
        self.attn_act = attn_act
        self.fused = fused
        self.pos_mode = pos_embed
        self.q = Linear(c, c, bias=qkv_bias)
        self.kv = Linear(c, 2 * c, bias=qkv_bias)
        self.proj = Linear(c, c)
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
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        check_choice("mixer.args.pos_embed", args.get("pos_embed", "stream"), POS_EMBED_MODES)
        sr = args.get("sr_ratio", 2)
        if isinstance(sr, (list, tuple)):
            fail("mixer.args.sr_ratio", sr, PER_STAGE_HINT)
        check_int("mixer.args.sr_ratio", sr)
        if dim % num_heads:
            raise ConfigError(f"heads={num_heads} is invalid for spatial-reduction attention at width {dim}: "
                              "the width must be a multiple of the number of heads")

    def add_pos_embed(self, x: Tensor) -> Tensor:
        """``x + pos_embed`` for a grid ``(B, H, W, C)`` (table resampled bicubically to H x W);
        ``x`` unchanged when this block owns no table."""
        if self.pos_embed is None:
            return x
        return x + resample_like(self.pos_embed, x)

    def stream(self, x: Tensor) -> Tensor:
        return self.add_pos_embed(x) if self.pos_mode == "stream" else x

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q ``(B, h, H*W, d)``; k, v ``(B, h, Nr, d)`` from the reduced map."""
        if self.pos_mode == "input":
            x = self.add_pos_embed(x)
        nh, d = self.num_heads, self.head_dim
        q = self.q(x).flatten(1, 2).unflatten(-1, (nh, d)).transpose(1, 2)
        if self.sr is not None:
            xr = self.sr(pad_to_multiple(x, self.sr_ratio, self.sr_ratio).permute(0, 3, 1, 2))
            xr = self.norm(xr.flatten(2).transpose(1, 2))
        else:
            xr = x.flatten(1, 2)
        kv = self.kv(xr).unflatten(-1, (2, nh, d)).permute(2, 0, 3, 1, 4)
        k, v = split_heads(kv, 2)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        y = attend(q, k, v, act=self.attn_act, scale=self.head_dim ** -0.5, fused=self.fused)
        return self.proj(y.transpose(1, 2).flatten(2).view(x.shape))

    def aggregation_weights(self, x: Tensor) -> Tensor:
        """Post-activation weights ``A`` of shape ``(B, h, H*W, Nr)`` (explicit path, same function as forward).

        ``A[b, n, i, j]`` is the weight head ``n`` gives reduced token ``j`` for query position ``i``: queries
        are map positions row-major (``i = row * W + col``); keys are the positions of the reduced
        ``ceil(H / sr) x ceil(W / sr)`` map row-major (the map itself when ``sr == 1``). With ``v`` the value
        heads ``(B, h, Nr, d)`` (channels ``C + n d .. C + (n + 1) d`` of ``kv`` applied to the reduced
        tokens), ``forward(x) = proj(merge_heads(A @ v))``.
        """
        q, k, _ = self._qkv(x)
        return attention_weights(q, k, act=self.attn_act, scale=self.head_dim ** -0.5)
