"""Attention as a dynamic kernel with a pluggable activation (Zhou et al., 2023).

The logits ``L = s * q k^T (+ bias)`` are the un-normalised dynamic kernel; the *activation*
turns them into aggregation weights ``A`` and the output is ``A v``. mixerlab's documented
definitions (N = number of keys a query may attend to, after masking):

====================  ===============================================================
``softmax``           softmax over keys (standard; uses fused SDPA when possible)
``relu``              ReLU(L) / N
``layernorm``         LayerNorm of each query's logits over its keys, no affine
``relu_layernorm``    LayerNorm (over keys, no affine) of ReLU(L)
``sigmoid``           sigmoid(L - log N)
====================  ===============================================================

Two kinds of masks, both boolean "may attend" tensors:

* ``mask`` (padding: keys that are not on the map). A masked key gets weight exactly 0 under
  every activation, on the fused and the explicit path, at any logit scale (softmax: logit
  -inf; the other activations exclude it from N and from the LayerNorm statistics). A query
  without any key gets all-zero weights on the explicit path (and from SDPA on the CPU); the
  mixers never build such rows for the fused path.
* ``region`` (Swin's shifted-window masks: pairs the cyclic roll brings together across the
  wrap). For softmax ``-100`` is *added* to such a logit, exactly as Swin and timm do, so weights
  copied from timm give timm's function at any weight scale; such a key keeps a weight of about
  ``exp(-100 + logit gap)``. For the other activations region-masked keys are excluded like
  padding (-100 inside a LayerNorm or ReLU would not mean "masked").

Fused and explicit paths compute the same function. Shapes: q ``(B, h, Nq, d)``, k and v
``(B, h, Nk, dv)``; bias, mask and region broadcastable to ``(B, h, Nq, Nk)``. SDPA's fused kernels
need 4-D inputs (a 5-D call falls back to its math kernel), so mixers fold windows into the
head axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..layers import is_fx_tracing

ATTN_ACTS = ("softmax", "relu", "layernorm", "relu_layernorm", "sigmoid")
REGION_LOGIT = -100.0  # Swin's additive logit for pairs of different shifted-window regions


class AttentionInputs(NamedTuple):
    """What a mixer hands :func:`attend` / :func:`attention_weights` (shapes in the module docstring)."""

    q: Tensor
    k: Tensor
    v: Tensor
    bias: Tensor | None = None
    mask: Tensor | None = None
    region: Tensor | None = None


def split_heads(qkv: Tensor, n: int) -> tuple[Tensor, ...]:
    """``(n, ...)`` -> n views ``(...)`` (q, k, v from a stacked projection).

    Through ``unbind``, whose backward stacks the n gradients into one tensor: ``qkv[i]``'s backward
    zero-fills a full ``qkv``-sized gradient per index and adds them (Swin-T stage 1 at batch 8: 3 x 29 MB
    per block, 247 ms of a 2.1 s train step). Indexed rather than unpacked (n given), so torch.fx traces it."""
    parts = qkv.unbind(0)
    return tuple(parts[i] for i in range(n))


def check_attn_act(act: str) -> None:
    if act not in ATTN_ACTS:
        raise ConfigError(f"mixer.args.attn_act={act!r} is invalid: allowed values are {list(ATTN_ACTS)}")


def activate(logits: Tensor, act: str, mask: Tensor | None = None) -> Tensor:
    """Turn logits ``(..., Nq, Nk)`` into aggregation weights; keys where ``mask`` is False get 0."""
    if act == "softmax":
        if mask is None:
            return logits.softmax(dim=-1)
        # -inf: exactly zero weight at any logit scale. The second fill turns the NaN rows of queries
        # without keys into zeros (as SDPA on the CPU); it changes nothing in other rows.
        return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1).masked_fill(~mask, 0.0)
    nk = logits.shape[-1]
    if mask is None:
        if act == "relu":
            return F.relu(logits) / nk
        if act == "sigmoid":
            return torch.sigmoid(logits - math.log(nk))
        x = F.relu(logits) if act == "relu_layernorm" else logits
        return F.layer_norm(x, (nk,), eps=1e-5)
    m = mask.to(logits.dtype)
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    if act == "relu":
        return F.relu(logits) * m / n
    if act == "sigmoid":
        return torch.sigmoid(logits - n.log()) * m
    x = F.relu(logits) if act == "relu_layernorm" else logits
    mean = (x * m).sum(-1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + 1e-5) * m


def _apply_region(act: str, bias: Tensor | None, mask: Tensor | None, region: Tensor | None,
                  dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Fold a region mask into the bias (softmax: Swin's additive -100) or the padding mask (others)."""
    if region is None:
        return bias, mask
    if act == "softmax":
        r = (~region).to(dtype) * REGION_LOGIT
        return (r if bias is None else bias + r), mask
    return bias, (region if mask is None else mask & region)


def attention_weights(q: Tensor, k: Tensor, *, act: str = "softmax", scale: float | None = None,
                      bias: Tensor | None = None, mask: Tensor | None = None,
                      region: Tensor | None = None) -> Tensor:
    """The explicit kernel ``act(scale * q k^T + bias)`` with the masks above: ``(B, h, Nq, Nk)``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias, mask = _apply_region(act, bias, mask, region, q.dtype)
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return activate(logits, act, mask)


def _bias_grad_on_cpu(q: Tensor, bias: Tensor | None) -> bool:
    # torch.fx traces the fused call (a proxy has no requires_grad to branch on); the same function.
    return (bias is not None and not is_fx_tracing() and torch.is_grad_enabled() and bias.requires_grad
            and q.device.type == "cpu")


def attend(q: Tensor, k: Tensor, v: Tensor, *, act: str = "softmax", scale: float | None = None,
           bias: Tensor | None = None, mask: Tensor | None = None, region: Tensor | None = None,
           fused: bool = True) -> Tensor:
    """``act(scale * q k^T + bias) v`` with the activations and masks above; returns ``(B, h, Nq, dv)``.

    Softmax goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
    GPU, a fused kernel on CPU) unless ``fused`` is False: padding alone is passed as SDPA's boolean
    mask, together with a bias as -inf in the additive mask. The other activations need the
    explicit kernel (:func:`attention_weights`), which is also what the analyses read. So does a
    bias that needs a gradient on the CPU (a learned relative-position table in training): CPU SDPA
    has no fused kernel for it and falls back to its math kernel, the same products plus separate
    q and k scalings and an all -inf check of every row (Swin-T train step, 2 threads: 5% slower).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if act == "softmax" and fused and not _bias_grad_on_cpu(q, bias):
        bias, mask = _apply_region(act, bias, mask, region, q.dtype)
        attn_mask = None if bias is None else bias.to(q.dtype)
        if mask is not None:
            attn_mask = mask if attn_mask is None else attn_mask.masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return attention_weights(q, k, act=act, scale=scale, bias=bias, mask=mask, region=region) @ v


def scatter_dense(blocks: Tensor, q_index: Tensor, k_index: Tensor, n: int) -> Tensor:
    """Weights of block-local attention ``(B, h, nBlocks, nq, nk)`` as one dense ``(B, h, n, n)`` map kernel.

    ``q_index[w, t]`` / ``k_index[w, s]`` (``(nBlocks, nq)`` / ``(nBlocks, nk)``) are the map positions of
    query t and key s of block w, ``n`` for padding (dropped). Every real query lies in exactly one block
    and a block's keys are distinct positions, so no real (query, key) pair is written twice.
    """
    b, h = blocks.shape[:2]
    flat = (q_index[:, :, None] * (n + 1) + k_index[:, None, :]).flatten()
    dense = blocks.new_zeros(b, h, (n + 1) ** 2)
    dense[:, :, flat] = blocks.flatten(2)
    return dense.view(b, h, n + 1, n + 1)[:, :, :n, :n]
