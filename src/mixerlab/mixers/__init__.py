"""Spatial token mixers: one interface (:class:`Mixer`), one module per family.

``MIXERS`` maps a config name to its class; :func:`build_mixer` builds one alone (for analyses)
or inside a block. Register a new family by adding its class here.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, check_choice
from ..init import init_mixer
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


def mixer_class(name: str, where: str = "mixer.name") -> type[Mixer]:
    check_choice(where, name, sorted(MIXERS))
    return MIXERS[name]


def resolve_mixer_args(name: str, args: dict[str, Any], ctx: MixerContext, where: str = "mixer") -> dict[str, Any]:
    """``args`` fitted to ``ctx``'s grid (:meth:`Mixer.fit`) and checked; errors name ``where``."""
    cls = mixer_class(name, f"{where}.name")
    kw = {"dim": ctx.dim, "num_heads": ctx.num_heads, "resolution": ctx.resolution, "stage": ctx.stage}
    fitted = cls.fit(args, **kw)
    try:
        cls.check_args(fitted, **kw)
    except ConfigError as e:  # in a per-stage list, say which stage's mixer
        if where == "mixer":
            raise
        raise type(e)(f"{where}: {e}") from None
    return fitted


def build_mixer(name: str, ctx: MixerContext, *, init: str = "trunc_normal", **args: Any) -> Mixer:
    """Build mixer ``name`` alone for context ``ctx``, exactly as a model would build it: arguments
    fitted to the grid and checked, weights initialised by scheme ``init`` (:mod:`mixerlab.init`) and
    then by the mixer's own special init."""
    mixer = MIXERS[name](ctx, **resolve_mixer_args(name, args, ctx))
    init_mixer(mixer, init)
    return mixer


__all__ = ["MIXERS", "Mixer", "MixerContext", "build_mixer", "mixer_class", "resolve_mixer_args"]
