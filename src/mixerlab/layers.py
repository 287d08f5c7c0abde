"""Small layers shared by stems, blocks and architectures (timm's where timm has them)."""

from __future__ import annotations

from timm.layers import LayerNorm2d, LayerScale
from torch import Tensor, nn


class BatchNormLast(nn.BatchNorm2d):
    """BatchNorm2d for a channels-last ``(B, H, W, C)`` grid or ``(B, N, C)`` tokens."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def channels_last_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """The norm of a residual branch: ``ln``, ``bn`` or ``none``, acting on the last dim."""
    if kind == "ln":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "bn":
        return BatchNormLast(dim)
    return nn.Identity()


__all__ = ["BatchNormLast", "LayerNorm2d", "LayerScale", "channels_last_norm"]
