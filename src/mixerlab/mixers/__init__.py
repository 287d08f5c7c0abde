"""Spatial token mixers: one interface (:class:`Mixer`), one module per family.

``MIXERS`` maps a config name to its class; :func:`build_mixer` builds one alone (for analyses)
or inside a block. Register a new family by adding its class here.
"""

from __future__ import annotations

from typing import Any

from .attention import GlobalAttention
from .base import Mixer, MixerContext
from .conv import DWConv, DWNetConv
from .deformable import DeformableConv
from .dma import DMA
from .dwattn import DepthwiseAttention
from .dynamic import DynamicDWConv, IDynamicDWConv
from .halo import HaloAttention
from .pooling import Identity, Pooling
from .sra import SpatialReductionAttention
from .window import WindowAttention

MIXERS: dict[str, type[Mixer]] = {
    "attention": GlobalAttention,
    "window": WindowAttention,
    "dwconv": DWConv,
    "dwnet": DWNetConv,
    "dynconv": DynamicDWConv,
    "idynconv": IDynamicDWConv,
    "dma": DMA,
    "pooling": Pooling,
    "identity": Identity,
    "dcn": DeformableConv,
    "halo": HaloAttention,
    "sra": SpatialReductionAttention,
    "dwattn": DepthwiseAttention,
}


def build_mixer(name: str, ctx: MixerContext, **args: Any) -> Mixer:
    """Validate ``args`` for mixer ``name`` and build it for context ``ctx``."""
    from ..config import check_choice

    check_choice("mixer.name", name, sorted(MIXERS))
    cls = MIXERS[name]
    cls.check_args(args, dim=ctx.dim, num_heads=ctx.num_heads, resolution=ctx.resolution, stage=ctx.stage)
    return cls(ctx, **args)


__all__ = ["MIXERS", "Mixer", "MixerContext", "build_mixer"]
