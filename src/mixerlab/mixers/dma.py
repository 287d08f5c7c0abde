"""Dynamic Multi-level Attention (DMA) of DMFormer (Wei et al., 2022, "DMFormer: Closing the Gap
Between CNN and Vision Transformers").

For ``x`` of shape ``(B, H, W, C)``, branches i = 1..n of depth-wise convs with kernel k_i and
dilation d_i (bias, zero padding d_i (k_i - 1) / 2, so every branch keeps the map size)::

    fused = sum_i DWConv_{k_i, d_i}(x)                                 (B, C, H, W)
    gate  = sigmoid(FC_{C/r -> C}(ReLU(FC_{C -> C/r}(GAP(x)))))         (B, C), FCs with bias
    y     = gate * Conv1x1(fused)                                      (B, H, W, C)

The paper's exact kernel sizes are not public here (SPEC 2.3); ours are arguments.

* Fusion is a sum followed by the 1x1 conv: a 1x1 conv over the concatenated branches with one
  weight shared by all branches, so parameters and MACs do not grow with the number of
  branches. (Any linear fusion of linear branches is one linear operator; the multi-level part
  is the parametrisation and the input-adaptive part is the gate.)
* Default ``kernel_sizes=(3, 5, 7)``, ``dilations=(1, 2, 2)``: receptive fields 3, 9 and 13, i.e.
  local, mid and near-global levels at stage 3 of a 224 model (14x14), with the largest
  dilations whose outermost taps still reach the 7x7 map of stage 4 (see below). (1, 2, 3)
  would give 3, 9, 19, whose 7x7 branch reads only padding at its outer taps on a 7x7 map.
* ``reduction`` (default 4, as DWNet's kernel generators) sets the gate's hidden width C // r.

A dilated branch whose outermost taps (offset r = d (k - 1) / 2 from the centre) cannot reach the
map from any position, i.e. r >= a side of the map at ``ctx.resolution`` (receptive field
d (k - 1) + 1 larger than 2 * side - 1), would only ever multiply zero padding: :meth:`DMA.fit`
lowers its dilation to the largest that reaches real pixels (1 at worst) and the resolved model
config records it. Undilated kernels follow the usual convention of depth-wise convs at any size.
The forward runs at any resolution; only the gate's pooling spans the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..linear import Linear
from .base import Mixer, MixerContext, check_reduction, odd_kernel, positive_int


class DMA(Mixer):
    def __init__(self, ctx: MixerContext, *, kernel_sizes: Sequence[int] = (3, 5, 7),
                 dilations: Sequence[int] = (1, 2, 2), reduction: int = 4) -> None:
        super().__init__()
        d = ctx.dim
        self.branches = nn.ModuleList(nn.Conv2d(d, d, k, padding=r * (k - 1) // 2, dilation=r, groups=d)
                                      for k, r in zip(kernel_sizes, dilations, strict=True))
        self.proj = nn.Conv2d(d, d, 1)
        self.fc1 = Linear(d, d // reduction)
        self.fc2 = Linear(d // reduction, d)

    @classmethod
    def fit(cls, args: dict[str, Any], *, resolution: tuple[int, int], **_: Any) -> dict[str, Any]:
        """On maps too small for a dilated branch (its outer taps would read only padding), lower that
        branch's dilation to the largest that still reaches real pixels (1 at worst); e.g. the default
        (3, 5, 7) x (1, 2, 2) becomes (1, 1, 1) dilations on the 4x4 and 1x1 maps of a 32-px U-* model."""
        ks, ds = args.get("kernel_sizes", (3, 5, 7)), args.get("dilations", (1, 2, 2))
        if not isinstance(ks, (list, tuple)) or not isinstance(ds, (list, tuple)) or len(ks) != len(ds):
            return dict(args)  # malformed: _check names the problem
        side = min(resolution)
        fitted = [r if not (isinstance(k, int) and isinstance(r, int) and r > 1 and r * (k - 1) // 2 >= side)
                  else max(1, (side - 1) // ((k - 1) // 2)) for k, r in zip(ks, ds, strict=True)]
        return dict(args) if fitted == list(ds) else {**args, "dilations": fitted}

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, **_: Any) -> None:
        ks, ds = args.get("kernel_sizes", (3, 5, 7)), args.get("dilations", (1, 2, 2))
        if not isinstance(ks, (list, tuple)) or not isinstance(ds, (list, tuple)) or not ks or len(ks) != len(ds):
            raise ConfigError(f"mixer.args.kernel_sizes={ks!r} / dilations={ds!r} are invalid: "
                              "two non-empty lists of the same length (one kernel size and dilation per branch)")
        for i, (k, r) in enumerate(zip(ks, ds, strict=True)):
            odd_kernel(f"kernel_sizes[{i}]", k)
            positive_int(f"dilations[{i}]", r)  # reach on small maps: see fit
        check_reduction(args, dim, "the gate's")

    def gate(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, C)`` in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((1, 2))))))

    def forward(self, x: Tensor) -> Tensor:
        xc = x.permute(0, 3, 1, 2)
        fused = self.branches[0](xc)
        for branch in self.branches[1:]:
            fused = fused + branch(xc)
        return self.proj(fused).permute(0, 2, 3, 1) * self.gate(x)[:, None, None, :]
