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

Paths: softmax with ``fused=True`` (default) runs :func:`halo_softmax`, a hand-written kernel that reads each
block's key window from the padded map a cache-sized chunk at a time (forward + backward at B 8, C 96, 56x56:
0.33 s against 0.86 s for the unfold-based reference in ``benchmarks/unfold_reference.py``); the other
activations and ``fused=False`` gather the windows and run :func:`~mixerlab.mixers.attend.attend`'s explicit
kernel, which the analyses read through :meth:`HaloAttention.aggregation_weights`.

Parameters: ``4 C^2 + C + 2 (2w - 1) d`` (q, kv, proj + bias, two tables) -- what STM-Eval's
``HaloAttn`` instantiates for ``pos_embed_type='query_related'``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..errors import ConfigError, check_int
from ..layers import is_fx_tracing
from ..linear import Linear, linear_fn
from .attend import AttentionInputs, attend, attention_weights, check_attn_act, scatter_dense
from .base import Mixer, MixerContext, positive_int
from .window import crop_like, pad_to_multiple, window_merge, window_positions

# Shape arithmetic lives in these functions, which torch.fx keeps as leaves (see mixers.window).

@register_notrace_function
def pad_halo(x: Tensor, block: int, halo: int) -> Tensor:
    """Zero-pad an NCHW map by ``halo`` on every side plus, bottom / right, up to a multiple of ``block``."""
    return F.pad(x, (halo, halo + -x.shape[3] % block, halo, halo + -x.shape[2] % block))


@register_notrace_function
def halo_windows(x: Tensor, block: int, halo: int, win: int) -> Tensor:
    """``(nBlocks, win * win)`` map positions (``row * W + col``) of each block's key window on the map of ``x``
    ``(B, H, W, C)``, ``H * W`` on padding."""
    h, w = x.shape[1], x.shape[2]
    pos = torch.arange(h * w, device=x.device).view(1, 1, h, w)
    pos = F.pad(pos, (halo, halo + -w % block, halo, halo + -h % block), value=h * w)
    return pos.unfold(2, win, block).unfold(3, win, block).reshape(-1, win * win)


@register_notrace_function
def halo_keys_on_map(x: Tensor, block: int, halo: int, win: int) -> Tensor:
    """``(nBlocks, win * win)`` padding mask: which keys of each block's window lie on the map of ``x``."""
    return halo_windows(x, block, halo, win) < x.shape[1] * x.shape[2]


# Attention-kernel elements (queries x keys) per chunk of the CPU loop below: a chunk's kernel, key/value
# windows and gradients (a few hundred KB at fp32) stay in the 1 MB L2 cache across its passes.
_CHUNK_ELEMENTS = 1 << 18


def _block_chunks(p: Tensor) -> list[tuple[slice, slice, slice]]:
    """``(samples, heads, block rows)`` slices covering the kernel ``p`` ``(B, h, gh, gw, b*b, w*w)``: on CPU
    chunks of about ``_CHUNK_ELEMENTS`` (whole samples, else whole heads of one sample, else block rows of one
    head: the slices of ``p``, ``q`` and ``y`` stay contiguous); elsewhere everything at once."""
    nb, nh, gh = p.shape[:3]
    whole = slice(None)
    if p.device.type != "cpu":
        return [(whole, whole, whole)]
    step = max(1, _CHUNK_ELEMENTS // p[0, 0, 0].numel())  # block rows per chunk
    if step >= nh * gh:
        k = step // (nh * gh)
        return [(slice(i, i + k), whole, whole) for i in range(0, nb, k)]
    if step >= gh:
        k = step // gh
        return [(slice(i, i + 1), slice(j, j + k), whole) for i in range(nb) for j in range(0, nh, k)]
    return [(slice(i, i + 1), slice(j, j + 1), slice(r, r + step))
            for i in range(nb) for j in range(nh) for r in range(0, gh, step)]


def _gather(windows: Tensor, c: tuple[slice, slice, slice]) -> Tensor:
    """A chunk's key/value windows ``(blocks, w*w, 2d)`` (row-major copy) from the map's window view."""
    return windows[c].permute(0, 1, 2, 3, 5, 6, 4).flatten(4, 5).flatten(0, 3)


class _HaloSoftmax(torch.autograd.Function):
    """Softmax halo attention with key/value windows read from the padded map, a chunk of blocks at a time.

    ``q`` ``(B, h, gh, gw, b*b, d)`` query blocks; ``kv`` ``(B, Hp, Wp, h, 2d)`` the padded key/value map
    (``Hp = gh b + 2 halo``); ``lh``, ``lw`` ``(B, h, gh, gw, b*b, w)`` relative logits of each query for the
    window's key rows / columns; ``neg`` ``(gh, gw, w*w)`` the additive padding mask (0 or -inf).
    Returns ``(B, h, gh, gw, b*b, d)``.

    Hand-written because no library kernel fits: SDPA's fused CPU kernel gives no gradient for its additive
    mask (the relative logits need one; with a mask that requires grad, SDPA falls back to its math path),
    and autograd of the explicit form keeps every (blocks x b*b x w*w) intermediate in memory plus a copy of
    every key window. Here each chunk gathers its windows into cache, adds the relative logits as two
    broadcasts (the b*b x w*w bias is never built) and keeps only the softmax weights for backward, which
    gathers the windows again and adds their gradients back onto the map."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, kv: Tensor, lh: Tensor, lw: Tensor, neg: Tensor, scale: float,
                block: int) -> Tensor:
        d, nq, win = q.shape[-1], q.shape[-2], lh.shape[-1]
        windows = kv.unfold(1, win, block).unfold(2, win, block).permute(0, 3, 1, 2, 4, 5, 6)  # (B,h,gh,gw,2d,w,w)
        p = q.new_empty(*q.shape[:-1], win * win)
        # Contiguous: with one block per row or column, q's flatten is a view in q's permuted layout, which
        # empty_like would copy and the chunks' .view(...) below could not fold.
        y = torch.empty_like(q, memory_format=torch.contiguous_format)
        for c in _block_chunks(p):
            k_v = _gather(windows, c)
            pc = p[c].view(-1, nq, win * win)
            mask = neg[c[2]].expand(*p[c].shape[:2], -1, -1, -1).reshape(-1, 1, win * win)
            logits = torch.baddbmm(mask, q[c].flatten(0, 3), k_v[..., :d].transpose(-1, -2), alpha=scale)
            grid = logits.view(-1, nq, win, win)
            grid.add_(lh[c].flatten(0, 3)[..., None]).add_(lw[c].flatten(0, 3)[..., None, :])
            torch.softmax(logits, -1, out=pc)
            torch.bmm(pc, k_v[..., d:], out=y[c].view(-1, nq, d))
        ctx.save_for_backward(q, kv, p, y)
        ctx.scale, ctx.block = scale, block
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        q, kv, p, y = ctx.saved_tensors
        d, nq, block = q.shape[-1], q.shape[-2], ctx.block
        win = round(p.shape[-1] ** 0.5)
        grad_y = grad_y.contiguous()
        n, hp, wp = kv.shape[:3]
        gh, gw = q.shape[2], q.shape[3]
        # Windows of blocks m apart along an axis are disjoint (w <= m b), so each of the m x m classes of blocks
        # adds its window gradients onto the map at once, through a plain view: rows from the class's first
        # block, cut into steps of m b rows, of which the first w are its windows. The map gets m - 1 blocks
        # of slack at the bottom / right for the last step (the 2 halo rows of padding fit in them).
        m = -(-win // block)
        grad_big = kv.new_zeros(n, (gh + m - 1) * block, (gw + m - 1) * block, *kv.shape[3:])
        grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
        grad_lh, grad_lw = q.new_empty(*q.shape[:-1], win), q.new_empty(*q.shape[:-1], win)
        windows = kv.unfold(1, win, block).unfold(2, win, block).permute(0, 3, 1, 2, 4, 5, 6)
        for c in _block_chunks(p):
            k_v = _gather(windows, c)
            pc, dy = p[c].view(-1, nq, win * win), grad_y[c].flatten(0, 3)
            ds = torch.bmm(dy, k_v[..., d:].transpose(-1, -2))  # dL/dP, then dL/dlogits in place
            ds.sub_((dy * y[c].flatten(0, 3)).sum(-1, keepdim=True)).mul_(pc)
            grid = ds.view(-1, nq, win, win)
            torch.sum(grid, -1, out=grad_lh[c].view(-1, nq, win))
            torch.sum(grid, -2, out=grad_lw[c].view(-1, nq, win))
            torch.bmm(ds, k_v[..., :d], out=grad_q[c].view(-1, nq, d)).mul_(ctx.scale)
            grad_k = torch.bmm(ds.transpose(-1, -2), q[c].flatten(0, 3)).mul_(ctx.scale)
            grad_v = torch.bmm(pc.transpose(-1, -2), dy)
            samples, heads, rows = c
            r0, nr = rows.start or 0, p[c].shape[2]
            for part, grad in ((slice(0, d), grad_k), (slice(d, 2 * d), grad_v)):
                src = grad.view(*p[c].shape[:4], win, win, d)  # (nb, nh, rows, gw, w, w, d)
                for i in range(min(m, nr)):
                    ti = len(range(i, nr, m))
                    for j in range(min(m, gw)):
                        tj = len(range(j, gw, m))
                        step = m * block
                        dst = grad_big[samples, (r0 + i) * block:(r0 + i) * block + ti * step,
                                       j * block:j * block + tj * step, heads, part]
                        dst = dst.unflatten(1, (ti, step))[:, :, :win].unflatten(3, (tj, step))[:, :, :, :, :win]
                        dst.permute(0, 5, 1, 3, 2, 4, 6).add_(src[:, :, i::m, j::m])  # (nb, nh, ti, tj, w, w, d)
        grad_kv = grad_big[:, :hp, :wp]
        return grad_q, grad_kv, grad_lh, grad_lw, None, None, None


@register_notrace_function
def halo_softmax(q: Tensor, kv: Tensor, rel_height: Tensor, rel_width: Tensor, rel_index: Tensor, block: int,
                 halo: int, heads: int, scale: float) -> Tensor:
    """Softmax halo attention of queries ``q`` ``(B, H, W, C)`` over keys and values ``kv`` ``(B, H, W, 2C)``
    (per head ``[k | v]``) with the relative-position tables: ``(B, H, W, C)`` head-merged, before the output
    projection. The same function as the explicit path of :class:`HaloAttention`, through :class:`_HaloSoftmax`."""
    b, h, w, c = q.shape
    d, gh, gw = c // heads, -(-h // block), -(-w // block)
    q = pad_to_multiple(q, block, block).view(b, gh, block, gw, block, heads, d).permute(0, 5, 1, 3, 2, 4, 6)
    lh = torch.einsum("...rcd,rkd->...rck", q, rel_height[rel_index]).flatten(-3, -2)  # (B, h, gh, gw, b*b, w)
    lw = torch.einsum("...rcd,ckd->...rck", q, rel_width[rel_index]).flatten(-3, -2)
    kv = F.pad(kv, (0, 0, halo, halo + -w % block, halo, halo + -h % block)).unflatten(-1, (heads, 2 * d))
    on_map = halo_keys_on_map(q.new_empty(1, h, w, 0), block, halo, rel_index.shape[1])
    neg = torch.zeros(on_map.shape, dtype=q.dtype, device=q.device).masked_fill_(~on_map, float("-inf"))
    y = _HaloSoftmax.apply(q.flatten(-3, -2), kv, lh, lw, neg.view(gh, gw, -1), scale, block)
    y = y.unflatten(-2, (block, block)).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, gh * block, gw * block, c)
    return y[:, :h, :w]


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
        self.q = Linear(c, c, bias=qkv_bias)
        self.kv = nn.Conv2d(c, 2 * c, 1, bias=qkv_bias)
        self.proj = Linear(c, c)
        n_rel = 2 * self.win_size - 1
        self.rel_height = nn.Parameter(torch.empty(n_rel, self.head_dim))
        self.rel_width = nn.Parameter(torch.empty(n_rel, self.head_dim))
        self.init_weights()
        # (block_size, win_size) table row for query position p in the block and key position k in the window.
        idx = torch.arange(self.win_size)[None, :] - torch.arange(block_size)[:, None] + self.win_size - 1
        self.register_buffer("rel_index", idx, persistent=False)

    def init_weights(self) -> None:
        # HaloNet / STM-Eval: N(0, d^-1/2) tables (not touched by the network-wide conv/linear init).
        nn.init.normal_(self.rel_height, std=self.head_dim ** -0.5)
        nn.init.normal_(self.rel_width, std=self.head_dim ** -0.5)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        positive_int("block_size", args.get("block_size", 7))
        check_int("mixer.args.halo_size", args.get("halo_size", 3), 0)
        if dim % num_heads:
            raise ConfigError(f"heads={num_heads} is invalid for halo attention at width {dim}: "
                              "the width must be a multiple of the number of heads")

    def rel_logits(self, q: Tensor) -> Tensor:
        """Relative-position logits for unscaled queries ``(..., b, b, d)`` -> ``(..., b*b, w*w)``."""
        lh = torch.einsum("...rcd,rkd->...rck", q, self.rel_height[self.rel_index])  # key row k
        lw = torch.einsum("...rcd,ckd->...rck", q, self.rel_width[self.rel_index])  # key column k
        logits = lh[..., :, None] + lw[..., None, :]
        return logits.flatten(-2).flatten(-3, -2)

    def _inputs(self, x: Tensor) -> AttentionInputs:
        """q ``(B, h * nBlocks, b*b, d)``, k and v ``(B, h * nBlocks, w*w, d)`` (blocks folded into the head
        axis, head-major: SDPA's fused kernels take 4-D inputs), the relative logits as bias and the padding
        mask ``(1, h * nBlocks, 1, w*w)``."""
        bs, hs, ws, nh, d = self.block_size, self.halo_size, self.win_size, self.num_heads, self.head_dim
        q = pad_to_multiple(self.q(x), bs, bs).unflatten(1, (-1, bs)).unflatten(3, (-1, bs))  # (B, gh, bs, gw, bs, C)
        q = q.unflatten(-1, (nh, d)).permute(0, 5, 1, 3, 2, 4, 6).flatten(2, 3)  # (B, h, nBlocks, bs, bs, d)
        kv = pad_halo(self.kv(x.permute(0, 3, 1, 2)), bs, hs)
        kv = kv.unfold(2, ws, bs).unfold(3, ws, bs)  # (B, 2C, gh, gw, ws, ws)
        kv = kv.unflatten(1, (nh, 2 * d)).flatten(3, 4).flatten(-2).permute(0, 1, 3, 4, 2)  # (B, h, nBlocks, ws*ws, 2d)
        mask = halo_keys_on_map(x, bs, hs, ws)[None, :, None].expand(nh, -1, -1, -1).flatten(0, 1)[None]
        return AttentionInputs(q.flatten(-3, -2).flatten(1, 2), kv[..., :d].flatten(1, 2), kv[..., d:].flatten(1, 2),
                               self.rel_logits(q).flatten(1, 2), mask)

    def _one_block_inputs(self, x: Tensor) -> AttentionInputs:
        """:meth:`_inputs` for a map that fits in one block (H, W <= block_size): every query's window then holds
        the whole map, so the block is global attention over the H*W tokens with the same relative-position
        table rows (``key - query + halo_size + win_size - 1`` along each axis) and no padding at all.
        q, k, v ``(B, h, H*W, d)``, bias ``(B, h, H*W, H*W)``. Exactly the padded computation without its
        padded queries and keys: at 32x32 input, U-Halo-micro's 4x4 / 2x2 / 1x1 stages computed 49 queries x
        169 keys per block for 16 / 4 / 1 tokens."""
        b, hh, ww, _ = x.shape
        nh, d = self.num_heads, self.head_dim
        q = self.q(x).view(b, hh, ww, nh, d).permute(0, 3, 1, 2, 4)  # (B, h, H, W, d)
        kv = self.kv(x.permute(0, 3, 1, 2)).view(b, nh, 2 * d, hh * ww).transpose(-1, -2)  # (B, h, HW, 2d)
        off = self.halo_size + self.win_size - 1
        rows, cols = torch.arange(hh, device=x.device), torch.arange(ww, device=x.device)
        lh = torch.einsum("bnrcd,rkd->bnrck", q, self.rel_height[rows[None, :] - rows[:, None] + off])
        lw = torch.einsum("bnrcd,ckd->bnrck", q, self.rel_width[cols[None, :] - cols[:, None] + off])
        bias = (lh[..., :, None] + lw[..., None, :]).flatten(-2).flatten(2, 3)
        return AttentionInputs(q.flatten(2, 3), kv[..., :d], kv[..., d:], bias)

    def _one_block(self, x: Tensor) -> bool:
        # Eager and torch.compile take the compact path when it applies; torch.fx, which cannot branch on
        # shapes, always traces the general (padded) one. Both compute the same function.
        return not is_fx_tracing() and x.shape[1] <= self.block_size and x.shape[2] <= self.block_size

    def forward(self, x: Tensor) -> Tensor:
        if self._one_block(x):
            t = self._one_block_inputs(x)
            y = attend(t.q, t.k, t.v, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias, fused=self.fused)
            return self.proj(y.transpose(1, 2).reshape(x.shape))
        if self.attn_act == "softmax" and self.fused:
            kv = linear_fn(x, self.kv.weight.flatten(1), self.kv.bias)  # the 1x1 conv, channels last
            return self.proj(halo_softmax(self.q(x), kv, self.rel_height, self.rel_width, self.rel_index,
                                          self.block_size, self.halo_size, self.num_heads, self.head_dim ** -0.5))
        t = self._inputs(x)
        y = attend(t.q, t.k, t.v, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias, mask=t.mask,
                   fused=False)  # (B, h * nBlocks, bs*bs, d)
        y = y.unflatten(1, (self.num_heads, -1)).permute(0, 2, 3, 1, 4).flatten(3)  # (B, nBlocks, bs*bs, C)
        return self.proj(crop_like(window_merge(y.flatten(0, 1), x, self.block_size, self.block_size), x))

    def aggregation_weights(self, x: Tensor) -> Tensor:
        """Post-activation weights ``A`` of shape ``(B, h, H*W, H*W)`` (explicit path, same function as forward).

        ``A[b, n, i, j]`` is the weight head ``n`` gives map position ``j`` for query position ``i``
        (positions row-major, ``i = row * W + col``): nonzero only for on-map keys of the window around i's block
        (padded keys have weight exactly 0 and are dropped). With ``v`` the value heads at map positions
        ``(B, h, H*W, d)`` (``kv`` output channels ``2 n d + d .. 2 (n + 1) d``),
        ``forward(x) = proj(merge_heads(A @ v))``.
        """
        n = x.shape[1] * x.shape[2]
        if self._one_block(x):
            t = self._one_block_inputs(x)
            return attention_weights(t.q, t.k, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias)
        t = self._inputs(x)
        a = attention_weights(t.q, t.k, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias, mask=t.mask)
        return scatter_dense(a.unflatten(1, (self.num_heads, -1)), window_positions(x, (self.block_size,) * 2, (0, 0)),
                             halo_windows(x, self.block_size, self.halo_size, self.win_size), n)
