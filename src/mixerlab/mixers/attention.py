"""Global multi-head self-attention (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

For tokens ``x`` of shape ``(B, N, C)`` (or a grid ``(B, H, W, C)``, flattened to N = H*W):

    q, k, v = split(x W_qkv + b_qkv)            # each (B, h, N, C/h)
    y = act(q k^T / sqrt(C/h)) v                # one dynamic N x N kernel per head
    out = merge_heads(y) W_o + b_o

Read as a convolution (Zhou et al., 2023): the attention matrix is a dynamic kernel with
global support, shared by the C/h channels of a head; ``attn_act`` selects its activation (see
:mod:`mixerlab.mixers.attend`); :meth:`GlobalAttention.aggregation_weights` returns it. Works at any
N and on any token layout, including a class token.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..linear import Linear
from .attend import attend, attention_weights, check_attn_act, split_heads
from .base import Mixer, MixerContext


class GlobalAttention(Mixer):
    needs_grid = False

    def __init__(self, ctx: MixerContext, *, attn_act: str = "softmax", qkv_bias: bool = True,
                 fused: bool = True) -> None:
        super().__init__()
        self.num_heads = ctx.num_heads
        self.head_dim = ctx.dim // ctx.num_heads
        self.attn_act = attn_act
        self.fused = fused
        self.qkv = Linear(ctx.dim, 3 * ctx.dim, bias=qkv_bias)
        self.proj = Linear(ctx.dim, ctx.dim)

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))

    def _qkv(self, x: Tensor) -> Tensor:
        """``(3, B, h, N, d)`` for tokens ``(B, N, C)`` or a grid ``(B, H, W, C)`` (N = H * W, row-major)."""
        qkv = self.qkv(x.flatten(1, -2)).unflatten(-1, (3, self.num_heads, self.head_dim))
        return qkv.permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = split_heads(self._qkv(x), 3)
        y = attend(q, k, v, act=self.attn_act, scale=self.head_dim ** -0.5, fused=self.fused)
        return self.proj(y.transpose(1, 2).flatten(2)).reshape(x.shape)

    def aggregation_weights(self, x: Tensor) -> Tensor:
        """Post-activation weights ``A`` of shape ``(B, h, N, N)`` (explicit path, same function as forward).

        ``A[b, n, i, j]`` is the weight head ``n`` gives token ``j`` for query token ``i``; tokens in input
        order (a grid's positions row-major, ``i = row * W + col``). With ``v`` the value heads ``(B, h, N, d)``
        (channels ``2C + n d .. 2C + (n + 1) d`` of ``qkv``), ``forward(x) = proj(merge_heads(A @ v))``.
        """
        q, k, _ = split_heads(self._qkv(x), 3)
        return attention_weights(q, k, act=self.attn_act, scale=self.head_dim ** -0.5)
