"""Floor baselines: average pooling (PoolFormer; Yu et al., 2022, "MetaFormer is Actually What
You Need for Vision") and identity (no spatial mixing).

``pooling``::

    y = AvgPool_{p x p, stride 1, padding p // 2, count_include_pad=False}(x) - x

Padding is not counted, so a border position averages only its real neighbours; subtracting
``x`` removes the identity the block's residual already carries. ``pool_size`` is odd so the
window stays centred; any resolution works.

``identity``: ``y = x``, no parameters. Both take and return ``(B, H, W, C)``; identity also
accepts ``(B, N, C)``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Mixer, MixerContext, odd_kernel


class Pooling(Mixer):
    def __init__(self, ctx: MixerContext, *, pool_size: int = 3) -> None:
        super().__init__()
        self.pool_size = pool_size

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        odd_kernel("pool_size", args.get("pool_size", 3))

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool_size
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), p, stride=1, padding=p // 2, count_include_pad=False)
        return pooled.permute(0, 2, 3, 1) - x


class Identity(Mixer):
    needs_grid = False

    def __init__(self, ctx: MixerContext) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x
