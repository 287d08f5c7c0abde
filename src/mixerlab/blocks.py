"""Residual blocks over a channels-last token grid ``(B, H, W, C)`` (or tokens ``(B, N, C)``).

``MetaBlock`` -- the one block of the unified view (Yu et al., 2022, "MetaFormer"; STM-Eval)::

    x = x + DropPath(g1 * Mixer(Norm1(x)))
    x = x + DropPath(g2 * MLP(Norm2(x)))        MLP = Linear(C, rC) -> GELU -> Linear(rC, C)

With ``norm1='ln', norm2='ln'`` it is the ViT / Swin / U-* block; with ``norm1='none',
norm2='bn'`` and the ``dwnet`` mixer it is the DWNet block (Han et al., 2022). g1, g2 are
LayerScale vectors when ``layer_scale`` is set; the MLP is timm's, with a chunked CPU path
(:mod:`mixerlab.mlp`). Before the first branch the block applies the
mixer's residual hook ``x = mixer.stream(x)`` (the identity except for PVT's ``sra``, whose stage
position table joins the residual stream there, as in PVT), so the block reads no mixer internals.

``ConvNeXtBlock`` -- the official ConvNeXt block (Liu et al., 2022), one residual::

    x = x + DropPath(g * MLP(LN(DWConv7x7(x))))
"""

from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from .layers import LayerScale, channels_last_norm
from .mlp import ChunkedMlp


def _scale(dim: int, init: float | None) -> nn.Module:
    return LayerScale(dim, init_values=init) if init is not None else nn.Identity()


class MetaBlock(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, *, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 layer_scale: float | None = None, norm1: str = "ln", norm2: str = "ln",
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = channels_last_norm(norm1, dim, norm_eps)
        self.mixer = mixer
        self.ls1 = _scale(dim, layer_scale)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = channels_last_norm(norm2, dim, norm_eps)
        self.mlp = ChunkedMlp(dim, int(dim * mlp_ratio))
        self.ls2 = _scale(dim, layer_scale)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.mixer.stream(x)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, *, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 layer_scale: float | None = 1e-6, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ChunkedMlp(dim, int(dim * mlp_ratio))
        self.ls = _scale(dim, layer_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.ls(self.mlp(self.norm(self.mixer(x)))))


BLOCK_TYPES: dict[str, type[nn.Module]] = {"metaformer": MetaBlock, "convnext": ConvNeXtBlock}
