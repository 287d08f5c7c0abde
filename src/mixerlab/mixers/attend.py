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

Masks are boolean "may attend" tensors. For softmax a masked key gets ``-100`` added to its
logit, exactly as Swin does (so weights copied from timm give the same output); for the other
activations masked keys are excluded from N and from the LayerNorm statistics and get weight 0.
Shapes: q ``(B, h, Nq, d)``, k and v ``(B, h, Nk, dv)``, bias broadcastable to
``(B, h, Nq, Nk)``, mask broadcastable to ``(B, h, Nq, Nk)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError

ATTN_ACTS = ("softmax", "relu", "layernorm", "relu_layernorm", "sigmoid")
_MASKED_LOGIT = -100.0  # Swin's value; exp(-100) underflows to 0 relative to any live logit


def check_attn_act(act: str) -> None:
    if act not in ATTN_ACTS:
        raise ConfigError(f"mixer.args.attn_act={act!r} is invalid: allowed values are {list(ATTN_ACTS)}")


def attention_weights(logits: Tensor, act: str, mask: Tensor | None = None) -> Tensor:
    """Turn logits ``(..., Nq, Nk)`` into aggregation weights with activation ``act``."""
    if act == "softmax":
        if mask is not None:
            logits = logits.masked_fill(~mask, _MASKED_LOGIT)
        return logits.softmax(dim=-1)
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


def attend(q: Tensor, k: Tensor, v: Tensor, *, act: str = "softmax", scale: float | None = None,
           bias: Tensor | None = None, mask: Tensor | None = None, fused: bool = True) -> Tensor:
    """``act(scale * q k^T + bias) v`` with the activations above; returns ``(B, h, Nq, dv)``.

    Softmax goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
    GPU, a fused kernel on CPU) unless ``fused`` is False; the other activations need the
    explicit kernel, which is also what the analyses read.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if act == "softmax" and fused:
        attn_bias = bias
        if mask is not None:
            m = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, _MASKED_LOGIT)
            attn_bias = m if attn_bias is None else attn_bias + m
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale)
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return attention_weights(logits, act, mask) @ v
