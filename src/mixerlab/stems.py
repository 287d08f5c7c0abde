"""Stems: image ``(B, in_chans, H, W)`` -> token grid ``(B, H/p, W/p, C)`` (channels last).

* ``patch``       ViT patchify: Conv p x p, stride p, bias (Dosovitskiy et al., 2021).
* ``patch_norm``  the same followed by LayerNorm (Swin, DWNet, ConvNeXt's 4x4 stem).
* ``conv``        Xiao et al., 2021 ("Early Convolutions Help Transformers See Better"):
                  k x k convs (no bias) + BatchNorm + ReLU, then a 1x1 conv with bias.
* ``unified``     STM-Evaluation: Conv3x3 s2 (C/2, bias) -> LN -> GELU -> Conv3x3 s2 (C, bias) -> LN.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import StemConfig
from .layers import LayerNorm2d


class Stem(nn.Module):
    def __init__(self, cfg: StemConfig, in_chans: int, dim: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        if cfg.name in ("patch", "patch_norm"):
            self.proj = nn.Conv2d(in_chans, dim, cfg.patch_size, stride=cfg.patch_size)
            self.norm = LayerNorm2d(dim, eps=norm_eps) if cfg.name == "patch_norm" else nn.Identity()
        elif cfg.name == "conv":
            layers: list[nn.Module] = []
            c_in = in_chans
            for k, s, c in zip(cfg.kernels[:-1], cfg.strides[:-1], cfg.channels[:-1], strict=True):
                layers += [nn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=False),
                           nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.Conv2d(c_in, dim, 1))
            self.proj = nn.Sequential(*layers)
            self.norm = nn.Identity()
        else:  # unified
            half = dim // 2
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, half, 3, stride=2, padding=1), LayerNorm2d(half, eps=1e-6), nn.GELU(),
                nn.Conv2d(half, dim, 3, stride=2, padding=1))
            self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x)).permute(0, 2, 3, 1)
