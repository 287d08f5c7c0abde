"""The one mixer interface.

Every spatial token mixer is an ``nn.Module`` with ``forward(x) -> y`` where ``x`` and ``y`` are
channels-last token grids of shape ``(B, H, W, C)``. (Sequence mixers such as global attention
also accept ``(B, N, C)``, which is how the isotropic ViT passes its class token along.)
Channels-last is the layout of the residual stream because LayerNorm, the MLP and every
attention projection act on the last dimension; convolutional mixers view the grid as NCHW
with channels-last strides, which is free and which PyTorch's convolutions handle natively.

A mixer is built from its keyword arguments plus a :class:`MixerContext` (width, heads, where it
sits in the network, the token grid it will see at the model's image size), so analyses can
construct one alone on a small map. Mixers declare nothing about their properties (sparsity,
sharing, dynamics): the analyses measure those.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import ConfigError, UnknownArgumentError, check_int, is_int


@dataclass(frozen=True)
class MixerContext:
    dim: int
    num_heads: int = 1
    stage: int = 0
    index: int = 0  # block index within the stage (Swin shifts odd blocks)
    resolution: tuple[int, int] = (14, 14)  # token grid at the model's image size


class Mixer(nn.Module):
    """Base class: subclasses take ``(ctx, **args)`` and implement ``forward``."""

    #: True when the mixer needs a 2-D grid (cannot take a class token along).
    needs_grid: ClassVar[bool] = True

    def init_weights(self) -> None:
        """Special initialisation run after the scheme's init (override where needed): the same in a
        model and for a mixer built alone (:func:`mixerlab.mixers.build_mixer`)."""

    def stream(self, x: Tensor) -> Tensor:
        """What the mixer adds to the block's residual stream before the block's first branch.

        The identity for every mixer but PVT's ``sra``, whose stage position table is added to the
        stream (not to the mixer's input). Blocks always call it, so a mixer alone and a mixer in a
        block are the same function: ``block(x) = x' + mixer(norm(x')) + ...`` with ``x' = stream(x)``."""
        return x

    @classmethod
    def fit(cls, args: dict[str, Any], *, dim: int, num_heads: int, resolution: tuple[int, int],
            stage: int = 0) -> dict[str, Any]:
        """Arguments adapted to the token grid the mixer will see (default: unchanged).

        Called once per stage when a model is resolved, before :meth:`check_args`; the adapted values
        are written into the resolved config, so they are visible and rebuilding from it reproduces the
        model. Must be idempotent (fitting fitted arguments changes nothing) and leave a mixer's
        arguments unchanged wherever they already work (the published 224-px configurations)."""
        return dict(args)

    @classmethod
    def allowed_args(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items()
                if n not in ("self", "ctx") and p.kind is p.KEYWORD_ONLY]

    @classmethod
    def check_args(cls, args: dict[str, Any], *, dim: int, num_heads: int,
                   resolution: tuple[int, int], stage: int = 0) -> None:
        """Reject unknown argument names, then let the family check values (``_check``) for the
        mixer of stage ``stage`` with width ``dim``."""
        unknown = sorted(set(args) - set(cls.allowed_args()))
        if unknown:
            raise UnknownArgumentError(f"mixer.args {unknown} are not arguments of mixer "
                              f"{cls.__name__}: allowed are {cls.allowed_args()}")
        cls._check(dict(args), dim=dim, num_heads=num_heads, resolution=resolution, stage=stage)

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int,
               resolution: tuple[int, int], stage: int) -> None:
        """Family-specific value checks; raise ConfigError naming the argument."""


def odd_kernel(name: str, k: Any) -> None:
    if not is_int(k) or k < 1 or k % 2 == 0:
        raise ConfigError(f"mixer.args.{name}={k!r} is invalid: an odd positive kernel size "
                          "(1, 3, 5, 7, ...) so that the output stays centred")


def positive_int(name: str, v: Any) -> None:
    check_int(f"mixer.args.{name}", v)


def check_reduction(args: dict[str, Any], dim: int, hidden: str) -> None:
    """``reduction`` (default 4) of a squeeze MLP of width ``dim // reduction``; ``hidden`` names that MLP."""
    r = args.get("reduction", 4)
    positive_int("reduction", r)
    if dim // r < 1:
        raise ConfigError(f"mixer.args.reduction={r!r} is invalid for width {dim}: "
                          f"{hidden} hidden width dim // reduction must be >= 1 (reduction <= {dim})")
