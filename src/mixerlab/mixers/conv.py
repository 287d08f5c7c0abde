"""Depth-wise convolution mixers (static; the DWNet block also with dynamic depth-wise convs).

``dwconv`` -- the U-ConvNeXt token mixer of STM-Evaluation (Wang et al., 2022, "Demystify
Transformers & Convolutions in Modern Image Deep Networks")::

    y = Conv1x1(DWConv_kxk(Conv1x1(x)))          all three with bias, k = 7 by default

With ``proj=False`` only the depth-wise conv remains (the mixer of the official ConvNeXt block,
Liu et al., 2022).

``dwnet`` -- the DWNet token mixer (Han et al., 2022, "On the Connection between Local
Attention and Dynamic Depth-wise Convolution")::

    y = BN(Conv1x1(ReLU(BN(DWConv_kxk(ReLU(BN(Conv1x1(x))))))))     1x1 convs without bias

With ``conv='dynamic'`` or ``conv='idynamic'`` the DWConv_kxk of the DWNet block is DWNet's
homogeneous or inhomogeneous dynamic depth-wise conv (``mixers.dynamic``; dynamic / i-dynamic
DWNet); ``groups`` sets the inhomogeneous conv's channel groups (default ``dim // num_heads``).

A static depth-wise kernel is shared across positions, never shared across channels.
Input and output are ``(B, H, W, C)``; the convolution sees the same memory as NCHW with
channels-last strides (no copy). Zero padding ``k // 2`` keeps the map size at any resolution.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError, check_choice
from .base import Mixer, MixerContext, odd_kernel
from .dynamic import DynamicDWConv2d, IDynamicDWConv2d, check_dynamic_args, idynamic_groups

DWNET_CONVS = ("static", "dynamic", "idynamic")


class DWConv(Mixer):
    def __init__(self, ctx: MixerContext, *, kernel_size: int = 7, proj: bool = True) -> None:
        super().__init__()
        d = ctx.dim
        self.pw1 = nn.Conv2d(d, d, 1) if proj else nn.Identity()
        self.dw = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
        self.pw2 = nn.Conv2d(d, d, 1) if proj else nn.Identity()

    @classmethod
    def _check(cls, args: dict[str, Any], **_: Any) -> None:
        odd_kernel("kernel_size", args.get("kernel_size", 7))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.pw2(self.dw(self.pw1(x))).permute(0, 2, 3, 1)


class DWNetConv(Mixer):
    def __init__(self, ctx: MixerContext, *, kernel_size: int = 7, conv: str = "static",
                 groups: int | None = None) -> None:
        super().__init__()
        d = ctx.dim
        self.conv0 = nn.Conv2d(d, d, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(d)
        self.conv: nn.Module
        if conv == "dynamic":
            self.conv = DynamicDWConv2d(d, kernel_size)
        elif conv == "idynamic":
            self.conv = IDynamicDWConv2d(d, kernel_size, idynamic_groups(groups, d, ctx.num_heads))
        else:
            self.conv = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
        self.bn = nn.BatchNorm2d(d)
        self.conv2 = nn.Conv2d(d, d, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(d)
        self.act = nn.ReLU()

    @classmethod
    def _check(cls, args: dict[str, Any], *, dim: int, num_heads: int, **_: Any) -> None:
        conv = args.get("conv", "static")
        check_choice("mixer.args.conv", conv, DWNET_CONVS)
        if conv != "idynamic" and args.get("groups") is not None:
            raise ConfigError(f"mixer.args.groups={args['groups']!r} is invalid with conv={conv!r}: "
                              "groups only applies to conv='idynamic'; leave it unset (None)")
        if conv == "static":
            odd_kernel("kernel_size", args.get("kernel_size", 7))
        else:
            check_dynamic_args(args, dim=dim, num_heads=num_heads, inhomogeneous=conv == "idynamic")

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.act(self.bn0(self.conv0(x)))
        x = self.act(self.bn(self.conv(x)))
        return self.bn2(self.conv2(x)).permute(0, 2, 3, 1)
