"""Hybrids with one mixer per stage (the next step of a design space: CoAtNet, CAFormer, MetaFormer's
``token_mixers``): the unified U-* macro-architecture at U-Swin's budget, convolution where maps are
large and attention where they are small.

* ``u_hybrid_window_*``: 7x7 depth-wise conv (U-ConvNeXt's mixer) in stages 1-2, shifted-window
  attention (U-Swin's) in stages 3-4.
* ``u_hybrid_global_*``: the same convolutions in stages 1-2, global attention in stages 3-4
  (CoAtNet's C-C-T-T layout; at 224 px stages 3-4 hold 14x14 and 7x7 tokens).
"""

from __future__ import annotations

from ..config import MixerConfig, ModelConfig
from .stm_eval import SWIN, unified

SCALES = ("micro", "tiny")
CONV = MixerConfig("dwconv", {"kernel_size": 7})
LATE = {"window": MixerConfig("window", {"window_size": 7}), "global": MixerConfig("attention", {})}


def configs() -> dict[str, ModelConfig]:
    return {f"u_hybrid_{kind}_{s}": unified(SWIN, s, [CONV, CONV, late, late])
            for kind, late in LATE.items() for s in SCALES}
