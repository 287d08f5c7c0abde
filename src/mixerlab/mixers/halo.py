"""Halo attention (Vaswani et al., 2021, "Scaling Local Self-Attention for Parameter Efficient
Visual Backbones"), in the form STM-Evaluation uses for U-Halo (Wang et al., 2022).

The map is cut into non-overlapping ``b x b`` query blocks (``b = block_size``, 7); each block
attends to the ``w x w`` window around it (``w = b + 2 * halo_size``, 13), i.e. the block plus a
halo of ``halo_size`` tokens on every side. For a grid ``x`` of shape ``(B, H, W, C)``, h heads of
width d = C / h:

    q = x W_q                               Linear, no bias
    k, v = Conv1x1(x)                       no bias, computed *before* any padding; the 2C output
                                            channels are grouped per head as [k_head | v_head]
                                            (STM-Eval's layout: its kv weights copy over)
    L[i, j] = q_i . k_j / sqrt(d) + q_i . R_h[r(i, j)] + q_i . R_w[c(i, j)]
    y_i = sum_j act(L)[i, j] v_j  over the w*w keys of the window of i's block
    out = y W_o + b_o                       Linear with bias

Relative-position logits (HaloNet's, "query-related"): two tables ``rel_height`` and
``rel_width`` of shape ``(2w - 1, d)``, shared by all heads, indexed by
``key position in window - query position in block + w - 1`` along each axis (timm's
``rel_logits_1d`` convention; the first ``2 * halo_size`` rows are never reached, as in timm and
STM-Eval, and are kept for parameter parity). They use the unscaled query, as STM-Eval does.

Padding: the key/value map is zero-padded by ``halo_size`` on every side plus, at the bottom /
right, up to a multiple of ``block_size`` (STM-Eval asserts divisibility instead; at 224 px
every U-Halo stage map -- 56, 28, 14, 7 -- is a multiple of 7). The query map gets the same
bottom/right padding and the padded queries are cropped. Every padded key is masked out exactly
(softmax logit -inf, as STM-Eval's -max-float fill; excluded from N and the LayerNorm statistics
for the other activations), so the output at a valid position never depends on the padding --
also on maps smaller than one block, where the block holds the whole map and halo attention
reduces to global attention with relative positions (the block is never shrunk, so the tables
keep their size at any resolution).
Attention never crosses samples: blocks are cut per sample.

Parameters: ``4 C^2 + C + 2 (2w - 1) d`` (q, kv, proj + bias, two tables) -- what STM-Eval's
``HaloAttn`` instantiates for ``pos_embed_type='query_related'``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError
from .attend import attend, check_attn_act
from .base import Mixer, MixerContext, positive_int


def exclude_keys(act: str, mask: Tensor, bias: Tensor | None,
                 dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """``(bias, mask)`` for :func:`attend` that give masked keys exactly zero weight.

    ``attend`` masks softmax logits with Swin's -100, which leaves weight on a masked key when the
    live logits are below -100 (unbounded products such as head-dim-1 logits); an additive -inf
    bias removes it for any logits. The other activations already exclude masked keys.
    """
    if act != "softmax":
        return bias, mask
    hard = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return (hard if bias is None else bias + hard), None


class HaloAttention(Mixer):
    def __init__(self, ctx: MixerContext, *, block_size: int = 7, halo_size: int = 3, attn_act: str = "softmax",
                 qkv_bias: bool = False, fused: bool = True) -> None:
        super().__init__()
        c = ctx.dim
        self.num_heads = ctx.num_heads
        self.head_dim = c // ctx.num_heads
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.attn_act = attn_act
        self.fused = fused
        self.q = nn.Linear(c, c, bias=qkv_bias)
        self.kv = nn.Conv2d(c, 2 * c, 1, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        n_rel = 2 * self.win_size - 1
        self.rel_height = nn.Parameter(torch.empty(n_rel, self.head_dim))
        self.rel_width = nn.Parameter(torch.empty(n_rel, self.head_dim))
        self.init_weights()
        # (block_size, win_size) table row for query position p in the block and key position k in the window.
        idx = torch.arange(self.win_size)[None, :] - torch.arange(block_size)[:, None] + self.win_size - 1
        self.register_buffer("rel_index", idx, persistent=False)
        self._masks: dict[tuple[Any, ...], Tensor] = {}

    def init_weights(self) -> None:
        # HaloNet / STM-Eval: N(0, d^-1/2) tables (not touched by the network-wide conv/linear init).
        nn.init.normal_(self.rel_height, std=self.head_dim ** -0.5)
        nn.init.normal_(self.rel_width, std=self.head_dim ** -0.5)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        positive_int("block_size", args.get("block_size", 7))
        halo = args.get("halo_size", 3)
        if not isinstance(halo, int) or halo < 0:
            raise ConfigError(f"mixer.args.halo_size={halo!r} is invalid: a non-negative integer")
        if dim % num_heads:
            raise ConfigError(f"heads={num_heads} is invalid for halo attention at width {dim}: "
                              "the width must be a multiple of the number of heads")

    def rel_logits(self, q: Tensor) -> Tensor:
        """Relative-position logits for unscaled queries ``(..., b, b, d)`` -> ``(..., b*b, w*w)``."""
        lh = torch.einsum("...rcd,rkd->...rck", q, self.rel_height[self.rel_index])  # key row k
        lw = torch.einsum("...rcd,ckd->...rck", q, self.rel_width[self.rel_index])  # key column k
        logits = lh[..., :, None] + lw[..., None, :]
        return logits.flatten(-2).flatten(-3, -2)

    def _mask(self, h: int, w: int, device: torch.device) -> Tensor:
        """``(nBlocks, 1, w*w)``: which keys of each block's window lie on the map."""
        key = (h, w, device)
        if key not in self._masks:
            bs, hs, ws = self.block_size, self.halo_size, self.win_size
            ph, pw = (-h) % bs, (-w) % bs
            valid = F.pad(torch.ones(1, 1, h, w, device=device), (hs, hs + pw, hs, hs + ph))
            valid = valid.unfold(2, ws, bs).unfold(3, ws, bs)  # (1, 1, nh, nw, ws, ws)
            self._masks[key] = valid.reshape(-1, 1, ws * ws) > 0
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        bs, hs, ws, nh_, d = self.block_size, self.halo_size, self.win_size, self.num_heads, self.head_dim
        ph, pw = (-h) % bs, (-w) % bs
        gh, gw = (h + ph) // bs, (w + pw) // bs
        q = F.pad(self.q(x), (0, 0, 0, pw, 0, ph))
        q = q.view(b, gh, bs, gw, bs, nh_, d).permute(0, 5, 1, 3, 2, 4, 6).reshape(b, nh_, gh * gw, bs, bs, d)
        kv = F.pad(self.kv(x.permute(0, 3, 1, 2)), (hs, hs + pw, hs, hs + ph))
        kv = kv.unfold(2, ws, bs).unfold(3, ws, bs)  # (B, 2C, gh, gw, ws, ws)
        kv = kv.reshape(b, nh_, 2 * d, gh * gw, ws * ws).permute(0, 1, 3, 4, 2)
        k, v = kv.split(d, dim=-1)  # (B, h, nBlocks, ws*ws, d)
        bias, mask = exclude_keys(self.attn_act, self._mask(h, w, x.device), self.rel_logits(q), q.dtype)
        y = attend(q.flatten(-3, -2), k, v, act=self.attn_act, scale=d ** -0.5, bias=bias, mask=mask,
                   fused=self.fused)  # (B, h, nBlocks, bs*bs, d)
        y = y.view(b, nh_, gh, gw, bs, bs, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, gh * bs, gw * bs, c)
        return self.proj(y[:, :h, :w])
