"""Straightforward unfold-based implementations of mixer operators: the speed references of issue 11.

    python benchmarks/unfold_reference.py [--threads 2] [--repeats 5]

Each reference computes the same function as the mixer's own operator by materialising every neighbourhood
with ``F.unfold`` (im2col) and reducing it with a plain product and sum, the textbook way to write a
spatially-varying or dynamic convolution; for dcn, whose points are deformed to fractional positions, by
gathering each point's four bilinear corners from the flattened map instead (no ``grid_sample``).
``tests/test_unfold_reference.py`` checks in float64 that each reference equals the mixer; this script times
both, forward + backward, at the tiny stage-1 shape (B 8, C 96, 56x56) and prints the speed-up (target:
>= 2x). Covered: dynconv, idynconv, dma, halo, dcn.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import STAGE1_ARGS, machine_line, median_time
from torch import Tensor

from mixerlab.mixers import MixerContext, build_mixer
from mixerlab.mixers.attend import activate
from mixerlab.mixers.deformable import DeformableConv
from mixerlab.mixers.dma import DMA
from mixerlab.mixers.dynamic import DynamicDWConv, IDynamicDWConv
from mixerlab.mixers.halo import HaloAttention


def neighbourhoods(x: Tensor, k: int, dilation: int = 1) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, k*k, H*W)``: every position's zero-padded k x k (dilated) neighbourhood."""
    b, c, h, w = x.shape
    return F.unfold(x, k, dilation=dilation, padding=dilation * (k // 2)).view(b, c, k * k, h * w)


def dynconv_reference(m: DynamicDWConv, x: Tensor) -> Tensor:
    """``dynconv``: one k x k kernel per sample and channel, applied as a weighted sum over unfolded taps."""
    u = m.pw1(x.permute(0, 3, 1, 2))
    b, c, h, w = u.shape
    weight = m.dw.kernel(u).flatten(2)  # (B, C, k*k)
    y = (neighbourhoods(u, m.dw.kernel_size) * weight[..., None]).sum(2).view(b, c, h, w)
    return m.pw2(y + m.dw.bias.view(1, -1, 1, 1)).permute(0, 2, 3, 1)


def idynconv_reference(m: IDynamicDWConv, x: Tensor) -> Tensor:
    """``idynconv``: a k x k kernel per position, shared by the channels of a group, over unfolded taps."""
    u = m.pw1(x.permute(0, 3, 1, 2))
    b, c, h, w = u.shape
    g, kk = m.dw.groups, m.dw.kernel_size ** 2
    weight = m.dw.kernel(u).flatten(-2)  # (B, G, k*k, H*W)
    cols = neighbourhoods(u, m.dw.kernel_size).view(b, g, c // g, kk, h * w)
    return m.pw2((cols * weight[:, :, None]).sum(3).view(b, c, h, w)).permute(0, 2, 3, 1)


def dma_reference(m: DMA, x: Tensor) -> Tensor:
    """``dma``: each dilated depth-wise branch as a weighted sum over unfolded (dilated) taps, then fuse, gate."""
    u = x.permute(0, 3, 1, 2)
    b, c, h, w = u.shape
    fused = 0
    for conv in m.branches:
        k, d = conv.kernel_size[0], conv.dilation[0]
        taps = neighbourhoods(u, k, d) * conv.weight.view(1, c, k * k, 1)
        fused = fused + taps.sum(2).view(b, c, h, w) + conv.bias.view(1, -1, 1, 1)
    return m.proj(fused).permute(0, 2, 3, 1) * m.gate(x)[:, None, None, :]


def halo_reference(m: HaloAttention, x: Tensor) -> Tensor:
    """``halo``: each block's key/value window unfolded from the zero-padded map (F.unfold, stride = block),
    explicit logits (content + relative positions) and the activation over the on-map keys. Maps must be a
    multiple of the block (as STM-Evaluation asserts)."""
    b, hh, ww, c = x.shape
    bs, hs, win, nh, d = m.block_size, m.halo_size, m.win_size, m.num_heads, m.head_dim
    gh, gw = hh // bs, ww // bs
    q = m.q(x).view(b, gh, bs, gw, bs, nh, d).permute(0, 5, 1, 3, 2, 4, 6).flatten(2, 3)  # (B, h, nB, bs, bs, d)
    kv = F.unfold(m.kv(x.permute(0, 3, 1, 2)), win, padding=hs, stride=bs)  # (B, 2C*win*win, nB)
    kv = kv.view(b, nh, 2 * d, win * win, gh * gw).permute(0, 1, 4, 3, 2)  # (B, h, nB, win*win, 2d)
    on_map = F.unfold(torch.ones(1, 1, hh, ww, dtype=x.dtype), win, padding=hs, stride=bs)  # (1, win*win, nB)
    on_map = (on_map[0].T > 0)[None, None, :, None, :]  # (1, 1, nB, 1, win*win)
    logits = q.flatten(-3, -2) @ kv[..., :d].transpose(-1, -2) * d ** -0.5 + m.rel_logits(q)
    y = activate(logits, m.attn_act, on_map) @ kv[..., d:]  # (B, h, nB, bs*bs, d)
    y = y.view(b, nh, gh, gw, bs, bs, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, hh, ww, c)
    return m.proj(y)


def dcn_reference(m: DeformableConv, x: Tensor) -> Tensor:
    """``dcn``: every point's bilinear sample written out: the four corner pixels (floor, floor + 1) of its
    deformed location gathered from the flattened value map with their bilinear weights, zero off the map
    (``grid_sample``'s ``align_corners=False``, zero padding), then the point weights and the sum over P."""
    b, h, w, c = x.shape
    g, pp = m.groups, m.points.shape[0]
    q = m.offset_query(x)
    offsets = m.sampling_offsets(q).view(b, h, w, g, pp, 2).permute(0, 3, 4, 1, 2, 5)  # (B, G, P, H, W, 2)
    weights = m.attention_weights(q).view(b, h * w, g, pp).softmax(-1).permute(0, 2, 3, 1)  # (B, G, P, H*W)
    v = m.value_proj(x).view(b, h * w, g, c // g).permute(0, 2, 3, 1)  # (B, G, Cg, H*W)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    pts, s = m.points.to(x.dtype)[:, None, None, :], m.offset_scale  # (P, 1, 1, 2) as (dx, dy)
    px = xs + s * (pts[..., 0] + offsets[..., 0])  # (B, G, P, H, W) sampling column, in pixels
    py = ys + s * (pts[..., 1] + offsets[..., 1])  # sampling row
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    sampled = 0
    for cx, cy, wgt in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                        (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
        on_map = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        idx = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().flatten(2)  # (B, G, P*H*W)
        corner = v.gather(3, idx[:, :, None].expand(-1, -1, c // g, -1)).view(b, g, c // g, pp, h * w)
        sampled = sampled + corner * (wgt * on_map).flatten(3)[:, :, None]  # (B, G, Cg, P, H*W)
    y = (sampled * weights[:, :, None]).sum(3)  # (B, G, Cg, H*W)
    return m.output_proj(y.permute(0, 3, 1, 2).reshape(b, h, w, c))


CASES: dict[str, tuple[str, dict, Callable[..., Tensor]]] = {
    name: (name, STAGE1_ARGS[name], ref) for name, ref in (("dynconv", dynconv_reference),
                                                          ("idynconv", idynconv_reference),
                                                          ("dma", dma_reference), ("halo", halo_reference),
                                                          ("dcn", dcn_reference))
}


def build(name: str, args: dict, dim: int, heads: int, side: int,
          dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return build_mixer(name, MixerContext(dim=dim, num_heads=heads, resolution=(side, side)), **args).to(dtype).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"machine: {machine_line(a.threads)}; "
          f"mixer forward + backward (sum of squares), B 8, C 96, 56x56, 3 heads, fp32, median of {a.repeats} "
          "after a warm-up; paired: mixer and reference on the same module and input")
    print("| mixer | mixer (s) | unfold reference (s) | speed-up | >= 2x |\n|---|---:|---:|---:|---|")
    for label, (name, args, ref) in CASES.items():
        m = build(name, args, 96, 3, 56).train()
        x = torch.randn(8, 56, 56, 96, requires_grad=True)
        t_mixer = median_time(lambda m=m, x=x: m(x).square().sum().backward(), a.repeats)
        t_ref = median_time(lambda m=m, x=x, ref=ref: ref(m, x).square().sum().backward(), a.repeats)
        print(f"| {label} | {t_mixer:.3f} | {t_ref:.3f} | {t_ref / t_mixer:.2f}x | "
              f"{'yes' if t_ref >= 2 * t_mixer else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
