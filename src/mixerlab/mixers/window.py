"""Shifted-window multi-head self-attention (Liu et al., 2021, "Swin Transformer").

For a grid ``x`` of shape ``(B, H, W, C)`` and window ``w``:

    x is zero-padded at the bottom/right to multiples of w (Hp x Wp)
    x' = roll(x, -s)  if this block shifts (odd blocks, s = w // 2), else x; cut into w x w windows
    per window and head: y = act(q k^T / sqrt(d) + B_rel) v,  B_rel from a (2w-1)^2 x h table
    windows are merged, the roll undone, the padding cropped, then a Linear projection.

Shifted windows are the windows of the padded grid offset by s: original rows r and r' share a
window iff floor((r - s) / w) == floor((r' - s) / w) (same for columns). The roll makes them
contiguous; the pairs it brings together across the wrap are masked (softmax logit -100), as in
Swin. Padding before rolling is the official Swin order (its detection code); timm rolls first and
pads after, so there a shifted window on a map that needs padding mixes rows from both ends of the
image. Padded tokens are masked as keys too (timm and Swin let them take part; mixerlab does not,
so the output does not depend on how much padding a map needs).
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
channels of a head (Han et al., 2022).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, check_choice
from .attend import attend, check_attn_act
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


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """``(B, H, W, C)`` with H, W multiples of the window -> ``(B * nW, wh * ww, C)``."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(x: Tensor, wh: int, ww: int, h: int, w: int) -> Tensor:
    c = x.shape[-1]
    x = x.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


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
        self.attn_act = attn_act
        self.fused = fused
        self.qkv = nn.Linear(ctx.dim, 3 * ctx.dim, bias=qkv_bias)
        self.proj = nn.Linear(ctx.dim, ctx.dim)
        wh, ww = self.window
        if rel_pos:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), ctx.num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        else:
            self.relative_position_bias_table = None
        self._masks: dict[tuple[Any, ...], Tensor | None] = {}

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        check_attn_act(args.get("attn_act", "softmax"))
        ws = args.get("window_size", 7)
        if not isinstance(ws, int) or ws < 1:
            raise ConfigError(f"mixer.args.window_size={ws!r} is invalid: a positive integer")
        check_choice("mixer.args.window_fit", args.get("window_fit", "balance"), WINDOW_FITS)

    def _mask(self, h: int, w: int, hp: int, wp: int, device: torch.device) -> Tensor | None:
        """``(nW, N, N)`` may-attend mask for shifted regions and padding, or None when all may."""
        key = (h, w, hp, wp, device)
        if key not in self._masks:
            (wh, ww), (sh, sw) = self.window, self.shift
            if not (sh or sw or hp > h or wp > w):
                self._masks[key] = None
            else:
                region = torch.zeros(hp, wp, dtype=torch.long, device=device)
                cnt = 0
                rows = (slice(0, hp - wh), slice(hp - wh, hp - sh), slice(hp - sh, hp)) if sh else (slice(0, hp),)
                cols = (slice(0, wp - ww), slice(wp - ww, wp - sw), slice(wp - sw, wp)) if sw else (slice(0, wp),)
                for hs in rows:
                    for ws in cols:
                        region[hs, ws] = cnt
                        cnt += 1
                # Padding (bottom/right of the unshifted grid, rolled with it) gets its own id, never a key.
                real = torch.zeros(hp, wp, dtype=torch.bool, device=device)
                real[:h, :w] = True
                region[~torch.roll(real, shifts=(-sh, -sw), dims=(0, 1))] = -1
                win = window_partition(region[None, :, :, None], wh, ww).squeeze(-1)  # (nW, N)
                self._masks[key] = (win[:, :, None] == win[:, None, :]) & (win[:, None, :] >= 0)
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        (wh, ww), (sh, sw) = self.window, self.shift
        ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        win = window_partition(x, wh, ww)  # (B*nW, N, C)
        bn, n, _ = win.shape
        qkv = self.qkv(win).reshape(bn, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = None
        if self.relative_position_bias_table is not None:
            idx = self.relative_position_index.reshape(-1)
            bias = self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        mask = self._mask(h, w, hp, wp, x.device)
        if mask is not None:
            mask = mask[None, :, None].expand(b, -1, -1, -1, -1).reshape(bn, 1, n, n)
        y = attend(qkv[0], qkv[1], qkv[2], act=self.attn_act, bias=bias, mask=mask, fused=self.fused)
        y = self.proj(y.transpose(1, 2).reshape(bn, n, c))
        y = window_reverse(y, wh, ww, hp, wp)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        return y[:, :h, :w]
