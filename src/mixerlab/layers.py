"""Small layers shared by stems, blocks and architectures (timm's where timm has them)."""

from __future__ import annotations

from timm.layers import LayerNorm2d, LayerScale
from torch import Tensor, nn
from torch.fx import _symbolic_trace

# torch.fx's own "am I being traced" test (newer torch splits out plain symbolic tracing from export).
is_fx_tracing = getattr(_symbolic_trace, "is_fx_symbolic_tracing", _symbolic_trace.is_fx_tracing)


class BatchNormLast(nn.BatchNorm2d):
    """BatchNorm2d over the last dim of a channels-last ``(B, H, W, C)`` grid or ``(B, N, C)`` tokens.

    Every leading position is one sample of the statistics, so the input is viewed as ``(B*H*W, C, 1, 1)``
    (free for a contiguous channels-last tensor): one code path for any rank, which FX can trace."""

    def _check_input_dim(self, input: Tensor) -> None:
        """Always 4-D by construction (and a rank test would be control flow FX cannot trace)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1], 1, 1)).reshape(x.shape)


def channels_last_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """The norm of a residual branch: ``ln``, ``bn`` or ``none``, acting on the last dim."""
    if kind == "ln":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "bn":
        return BatchNormLast(dim)
    return nn.Identity()


__all__ = ["BatchNormLast", "LayerNorm2d", "LayerScale", "channels_last_norm", "is_fx_tracing"]
