"""Hierarchical backbones: stages at strides p, 2p, 4p, 8p (p = stem patch size, 4 by default).

One class, three macro-architectures selected by config (SPEC 3 and 5):

* STM-Evaluation's unified "MetaArch" (U-*): ``stem='unified'``, ``downsample='conv3x3'``
  (Conv3x3 s2 no bias + LN), ``stage_norm=True`` (LN after every stage), ``head='conv_bn'``
  (Conv1x1 C -> 1.5C no bias -> BN -> GELU -> avg pool -> Linear), LayerScale 1e-6.
* Swin / DWNet: ``stem='patch_norm'`` (4x4), ``downsample='patch_merging'`` (2x2 concat -> LN ->
  Linear 4C -> 2C, no bias; odd maps are zero-padded), ``head='norm_pool'`` (LN -> avg pool -> Linear).
* ConvNeXt: ``stem='patch_norm'``, ``downsample='ln_conv2x2'`` (LN -> Conv2x2 s2), ``block='convnext'``,
  ``head='pool_norm'`` (avg pool -> LN -> Linear).

The residual stream is channels-last ``(B, H, W, C)``; ``forward_features`` returns NCHW.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..blocks import BLOCK_TYPES
from ..config import ModelConfig
from ..errors import ConfigError, check_choice
from ..layers import LayerNorm2d
from ..linear import Linear
from ..mixers import MIXERS
from ..stems import Stem
from .base import MixerNet, drop_path_rates
from .resolve import stage_context


class Downsample(nn.Module):
    """Halve the grid and change the width; ``(B, H, W, Ci) -> (B, ceil(H/2), ceil(W/2), Co)``."""

    def __init__(self, kind: str, c_in: int, c_out: int, eps: float) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv3x3":
            self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
            self.norm = LayerNorm2d(c_out, eps=eps)
        elif kind == "ln_conv2x2":
            self.norm = LayerNorm2d(c_in, eps=eps)
            self.conv = nn.Conv2d(c_in, c_out, 2, stride=2)
        else:  # patch_merging
            self.norm = nn.LayerNorm(4 * c_in, eps=eps)
            self.reduction = Linear(4 * c_in, c_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "patch_merging":
            x = pad_even(x, (1, 2))
            b, h, w, c = x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
            # Swin's concat order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.
            x = x.reshape(b, h, 2, w, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
            return self.reduction(self.norm(x))
        x = x.permute(0, 3, 1, 2)
        if self.kind == "conv3x3":
            x = self.norm(conv3x3_s2(x, self.conv.weight))
        else:
            x = self.conv(pad_even(self.norm(x), (2, 3)))
        return x.permute(0, 2, 3, 1)


# Shape-dependent code stays out of FX graphs: timm's notrace functions are leaves when traced (public
# names: torch.fx never wraps a global whose name starts with "_").
@register_notrace_function
def pad_even(x: Tensor, dims: tuple[int, int]) -> Tensor:
    """Zero-pad dims ``dims`` (height, width) of ``x`` at the end up to even sizes."""
    pad = [0] * (2 * x.dim())
    for d in dims:
        pad[2 * (x.dim() - 1 - d) + 1] = x.shape[d] % 2
    return F.pad(x, pad)


@register_notrace_function
def conv3x3_s2(x: Tensor, weight: Tensor) -> Tensor:
    """Stride-2 3x3 conv, padding 1, no bias, NCHW. On a map one pixel wide the padding is explicit: same
    result, but on CPU oneDNN's bf16 weight gradient of the padded conv returns uninitialised values for
    the padding-only taps (torch 2.15; tests/test_models.py::test_downsample_bf16_one_pixel_map)."""
    if min(x.shape[2:]) == 1:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, stride=2)
    return F.conv2d(x, weight, stride=2, padding=1)


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], norm: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class Head(nn.Module):
    """Classifier head over an NCHW map; ``fc`` is the final Linear in every kind.

    ``pool`` 'avg' (global average) or '' (no pooling: the head returns its map, norms included,
    which needs ``fc`` removed). :meth:`prune` drops all of it but the pooling (the conv-BN of
    ``conv_bn``, the norm of ``pool_norm``): a pruned backbone keeps no unused parameter."""

    def __init__(self, kind: str, dim: int, num_classes: int, ratio: float, eps: float) -> None:
        super().__init__()
        self.kind = kind
        self.pool = "avg"
        self.hidden = int(dim * ratio) if kind == "conv_bn" else dim
        if kind == "conv_bn":
            self.conv = nn.Conv2d(dim, self.hidden, 1, bias=False)
            self.bn = nn.BatchNorm2d(self.hidden)
            self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=eps) if kind == "pool_norm" else nn.Identity()
        self.fc = Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def prune(self, dim: int) -> None:
        if self.kind == "conv_bn":
            del self.conv, self.bn, self.act
            self.kind, self.hidden = "pool", dim
        self.norm = self.fc = nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.kind == "conv_bn":
            x = self.act(self.bn(self.conv(x)))
        if not self.pool:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.norm(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


class HierarchicalNet(MixerNet):
    trunk = "stages"
    classifier = "head.fc"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        cfg = self.config  # resolved: one mixer config per stage, arguments fitted to the stage's grid
        self.num_features = cfg.dims[-1]
        self.stem = Stem(cfg.stem, cfg.in_chans, cfg.dims[0], cfg.norm_eps)
        block_cls = BLOCK_TYPES[cfg.block]
        norms = {} if cfg.block == "convnext" else {"norm1": cfg.norm1, "norm2": cfg.norm2}
        rates = drop_path_rates(cfg.drop_path, sum(cfg.depths))
        stages, k, p = [], 0, cfg.stem.patch_size
        self.feature_info = []
        for i, (depth, dim, mixer_cfg, ratio) in enumerate(
                zip(cfg.depths, cfg.dims, cfg.stage_mixers(), cfg.stage_mlp_ratios(), strict=True)):
            down = Downsample(cfg.downsample, cfg.dims[i - 1], dim, cfg.norm_eps) if i else nn.Identity()
            blocks = []
            for j in range(depth):
                mixer = MIXERS[mixer_cfg.name](stage_context(cfg, i, j), **mixer_cfg.args)
                blocks.append(block_cls(dim, mixer, mlp_ratio=ratio, drop_path=rates[k], layer_scale=cfg.layer_scale,
                                        norm_eps=cfg.norm_eps, **norms))
                k += 1
            norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.stage_norm else nn.Identity()
            stages.append(Stage(down, blocks, norm))
            self.feature_info.append({"num_chs": dim, "reduction": p * 2**i, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=cfg.norm_eps) if cfg.head == "norm_pool" else nn.Identity()
        self.head = Head(cfg.head, cfg.dims[-1], cfg.num_classes, cfg.head_ratio, cfg.norm_eps)
        self.head_hidden_size = self.head.hidden
        self._init_weights()

    # ---- timm model contract -----------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.set_global_pool(global_pool, num_classes)
        self.num_classes = num_classes
        self.head.fc = self._new_linear(self.head.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def set_global_pool(self, global_pool: str, num_classes: int | None = None) -> None:
        """'avg' (global average pooling) or '' (none: forward returns the head's map; needs no classifier)."""
        check_choice("global_pool", global_pool, ("avg", ""))
        if not global_pool and (self.num_classes if num_classes is None else num_classes):
            raise ConfigError("global_pool='' is invalid with a classifier: set num_classes=0 (unpooled maps)")
        self.head.pool = global_pool

    def prune_head(self) -> None:
        self.num_classes = 0
        self.head.prune(self.num_features)
        self.head_hidden_size = self.head.hidden

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else
                [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                 (r"^norm", (99999,))]}

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (timm API). ``output_fmt`` 'NCHW' or 'NHWC'; ``norm`` applies the final
        norm to the last stage's output."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} is invalid: allowed values are ['NCHW', 'NHWC']")
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == len(self.stages) - 1 else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates
