"""Shifted-window multi-head self-attention (Liu et al., 2021, "Swin Transformer").

For a grid ``x`` of shape ``(B, H, W, C)`` and window ``w``:

    x is zero-padded at the bottom/right to multiples of w (Hp x Wp)
    x' = roll(x, -s)  if this block shifts (odd blocks, s = w // 2), else x; cut into w x w windows
    per window and head: y = act(q k^T / sqrt(d) + B_rel) v,  B_rel from a (2w-1)^2 x h table
    windows are merged, the roll undone, the padding cropped, then a Linear projection.

Shifted windows are the windows of the padded grid offset by s: original rows r and r' share a
window iff floor((r - s) / w) == floor((r' - s) / w) (same for columns). The roll makes them
contiguous; the pairs it brings together across the wrap are region-masked: softmax adds -100 to
their logits, exactly as Swin (so timm's weights give timm's function at any scale), the other
activations exclude them (see :mod:`mixerlab.mixers.attend`). Padding before rolling is the official
Swin order (its detection code); timm rolls first and pads after, so there a shifted window on a map
that needs padding mixes rows from both ends of the image. Padded tokens are masked as keys with
exactly zero weight (timm and Swin let them take part; mixerlab does not, so the output does not
depend on how much padding a map needs).
When the map at the model's image size is not larger than the window along a side, the window
shrinks to the map and that side is not shifted (as in Swin and STM-Evaluation). When it is larger
but not a multiple of the window, ``window_fit`` decides (per side, at the model's image size):

* ``"balance"`` (default): keep the number of windows padding would give, n = ceil(map / w), and
  make them equal, w' = ceil(map / n) <= w, shift w' // 2. A 32-px U-Swin's 8x8 stage-1 grid gets
  2 x 2 windows of 4 x 4 instead of one 7 x 7 window and three slivers (7 x 1, 1 x 7, 1 x 1) of a
  14 x 14 grid that is two thirds padding: on Fashion-MNIST it trained to 92.00% vs 91.75% top-1
  in 10 epochs, with 26% less time per epoch (docs/benchmarks.md).
* ``"pad"``: keep w and pad (timm's and Swin's detection behaviour).

Both give w whenever it divides the map (every stage of the published 224-px models), so they
agree there. The relative-position table is sized for the effective window.
Local attention is a dynamic depth-wise convolution with a w x w support that is shared by the
channels of a head (Han et al., 2022); :meth:`WindowAttention.aggregation_weights` returns that kernel
as a dense map-position matrix per head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..errors import check_choice, check_int
from ..layers import is_fx_tracing
from ..linear import Linear
from .attend import AttentionInputs, attend, attention_weights, check_attn_act, scatter_dense, split_heads
from .base import Mixer, MixerContext


def relative_position_index(wh: int, ww: int, device: torch.device | None = None) -> Tensor:
    """``(wh*ww, wh*ww)`` index into a ``(2wh-1)(2ww-1)`` table, in Swin's ordering."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1


WINDOW_FITS = ("balance", "pad")


def fit_window(size: int, window: int, fit: str = "balance") -> tuple[int, int]:
    """Effective ``(window, shift)`` along a side of ``size`` tokens (see the module docstring)."""
    if size <= window:
        return size, 0
    if fit == "balance":
        window = math.ceil(size / math.ceil(size / window))
    return window, window // 2


# Shape arithmetic lives in these functions, which torch.fx (timm's feature extraction) keeps as
# leaves: traced once, a mixer then runs at any map size.

@register_notrace_function
def pad_to_multiple(x: Tensor, wh: int, ww: int) -> Tensor:
    """Zero-pad ``(B, H, W, C)`` at the bottom / right to multiples of ``(wh, ww)``."""
    return F.pad(x, (0, 0, 0, -x.shape[2] % ww, 0, -x.shape[1] % wh))


@register_notrace_function
def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """``(B, H, W, C)`` with H, W multiples of the window -> ``(B * nW, wh * ww, C)``, windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


@register_notrace_function
def window_merge(x: Tensor, like: Tensor, wh: int, ww: int) -> Tensor:
    """Inverse of :func:`window_partition` onto the padded map of ``like`` ``(B, H, W, C)``:
    ``(B * nW, wh * ww, C)`` -> ``(B, Hp, Wp, C)``."""
    hp, wp = like.shape[1] + -like.shape[1] % wh, like.shape[2] + -like.shape[2] % ww
    x = x.view(-1, hp // wh, wp // ww, wh, ww, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, x.shape[-1])


@register_notrace_function
def crop_like(y: Tensor, x: Tensor) -> Tensor:
    """``y`` cut to the ``H x W`` of ``x`` (both ``(B, H, W, C)``-shaped): drops bottom / right padding."""
    return y[:, :x.shape[1], :x.shape[2]]


def _padded_grid(x: Tensor, window: tuple[int, int], shift: tuple[int, int], pad_value: int) -> Tensor:
    """``(nW, N)``: map position ``row * W + col`` of every token of every rolled window for the map of ``x``;
    ``pad_value`` on padding."""
    h, w = x.shape[1], x.shape[2]
    (wh, ww), (sh, sw) = window, shift
    grid = torch.full((h + -h % wh, w + -w % ww), pad_value, dtype=torch.long, device=x.device)
    grid[:h, :w] = torch.arange(h * w, device=x.device).view(h, w)
    grid = torch.roll(grid, shifts=(-sh, -sw), dims=(0, 1))
    return window_partition(grid[None, :, :, None], wh, ww).squeeze(-1)


@register_notrace_function
def window_positions(x: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``(nW, N)`` map positions (``row * W + col``) of the tokens of each rolled window, ``H * W`` on padding."""
    return _padded_grid(x, window, shift, x.shape[1] * x.shape[2])


@register_notrace_function
def window_keys_on_map(x: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``(nW, 1, 1, N)`` padding mask: which tokens of each rolled window lie on the map of ``x``."""
    return (_padded_grid(x, window, shift, -1) >= 0)[:, None, None, :]


@register_notrace_function
def shift_regions(x: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``(nW, 1, N, N)`` region mask: which token pairs of each rolled window come from one region of the
    padded map of ``x`` (Swin's labelling; a window that wraps holds tokens from both ends)."""
    (wh, ww), (sh, sw) = window, shift
    hp, wp = x.shape[1] + -x.shape[1] % wh, x.shape[2] + -x.shape[2] % ww
    region = torch.zeros(hp, wp, dtype=torch.long, device=x.device)
    rows = (slice(0, hp - wh), slice(hp - wh, hp - sh), slice(hp - sh, hp)) if sh else (slice(0, hp),)
    cols = (slice(0, wp - ww), slice(wp - ww, wp - sw), slice(wp - sw, wp)) if sw else (slice(0, wp),)
    for i, (hs, ws) in enumerate((hs, ws) for hs in rows for ws in cols):
        region[hs, ws] = i
    win = window_partition(region[None, :, :, None], wh, ww).squeeze(-1)  # (nW, N)
    return (win[:, :, None] == win[:, None, :])[:, None]


class WindowAttention(Mixer):
    def __init__(self, ctx: MixerContext, *, window_size: int = 7, shift: bool = True,
                 attn_act: str = "softmax", qkv_bias: bool = True, rel_pos: bool = True,
                 fused: bool = True, window_fit: str = "balance") -> None:
        super().__init__()
        fits = [fit_window(r, window_size, window_fit) for r in ctx.resolution]
        self.window = (fits[0][0], fits[1][0])
        shifting = shift and ctx.index % 2 == 1
        self.shift = (fits[0][1], fits[1][1]) if shifting else (0, 0)
        self.num_heads = ctx.num_heads
        self.head_dim = ctx.dim // ctx.num_heads
        self.attn_act = attn_act
        self.fused = fused
        self.qkv = Linear(ctx.dim, 3 * ctx.dim, bias=qkv_bias)
        self.proj = Linear(ctx.dim, ctx.dim)
        wh, ww = self.window
        if rel_pos:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), ctx.num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        else:
            self.relative_position_bias_table = None

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        check_int("mixer.args.window_size", args.get("window_size", 7))
        check_choice("mixer.args.window_fit", args.get("window_fit", "balance"), WINDOW_FITS)

    def _per_head(self, t: Tensor) -> Tensor:
        """``(nW, 1 or h, ...)`` -> ``(1, nW * h, ...)``: the window-major head axis of :meth:`_inputs` (4-D:
        SDPA's CPU kernel falls back to its slower math path for a 3-D mask)."""
        return t.expand(-1, self.num_heads, -1, -1).flatten(0, 1)[None]

    def _inputs(self, x: Tensor) -> AttentionInputs:
        """q, k, v ``(B, nW * h, N, d)`` (the windows of the padded, rolled map folded into the head axis,
        window-major: SDPA's fused kernels take 4-D inputs) and bias / masks broadcastable to
        ``(B, nW * h, N, N)`` with a batch axis of 1: built once per map rather than once per sample (the
        layout costs a copy of q, k, v, less than per-sample masks or three thinner qkv products)."""
        wh, ww = self.window
        xp = pad_to_multiple(x, wh, ww)
        if self.shift != (0, 0):
            xp = torch.roll(xp, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        qkv = self.qkv(window_partition(xp, wh, ww)).unflatten(0, (x.shape[0], -1))  # (B, nW, N, 3C)
        qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(3, 0, 1, 4, 2, 5).flatten(2, 3)
        n_win = qkv.shape[2] // self.num_heads
        bias = region = keys = None
        # The padding mask only where the map needs padding (the same function: without padding it is all
        # True), since SDPA then takes the additive mask alone; torch.fx traces the general case.
        if is_fx_tracing() or x.shape[1] % wh or x.shape[2] % ww:
            keys = self._per_head(window_keys_on_map(x, self.window, self.shift))  # (1, nW * h, 1, N)
        if self.relative_position_bias_table is not None:
            n = wh * ww
            table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
            bias = self._per_head(table.view(n, n, -1).permute(2, 0, 1).expand(n_win, -1, -1, -1))
        if self.shift != (0, 0):
            region = self._per_head(shift_regions(x, self.window, self.shift))
        q, k, v = split_heads(qkv, 3)
        return AttentionInputs(q, k, v, bias, keys, region)

    def forward(self, x: Tensor) -> Tensor:
        t = self._inputs(x)
        y = attend(t.q, t.k, t.v, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias, mask=t.mask,
                   region=t.region, fused=self.fused)  # (B, nW * h, N, d)
        y = self.proj(y.unflatten(1, (-1, self.num_heads)).transpose(2, 3).flatten(3).flatten(0, 1))
        y = window_merge(y, x, *self.window)
        if self.shift != (0, 0):
            y = torch.roll(y, shifts=self.shift, dims=(1, 2))
        return crop_like(y, x)

    def aggregation_weights(self, x: Tensor) -> Tensor:
        """Post-activation weights ``A`` of shape ``(B, h, H*W, H*W)`` (explicit path, same function as forward).

        ``A[b, n, i, j]`` is the weight head ``n`` gives map position ``j`` for query position ``i``
        (positions row-major, ``i = row * W + col``): nonzero only for keys in the query's (rolled) window;
        padded keys are dropped (their weight is exactly 0); keys of another region of a wrapping window
        keep Swin's ``exp(-100)``-scaled softmax weight. With ``v`` the value heads at map positions
        ``(B, h, H*W, d)`` (channels ``2C + n d .. 2C + (n + 1) d`` of ``qkv``),
        ``forward(x) = proj(merge_heads(A @ v))``.
        """
        t = self._inputs(x)
        a = attention_weights(t.q, t.k, act=self.attn_act, scale=self.head_dim ** -0.5, bias=t.bias, mask=t.mask,
                              region=t.region)
        pos = window_positions(x, self.window, self.shift)
        return scatter_dense(a.unflatten(1, (-1, self.num_heads)).transpose(1, 2), pos, pos, x.shape[1] * x.shape[2])
