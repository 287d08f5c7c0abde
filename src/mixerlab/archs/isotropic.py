"""Isotropic backbones: one stage of blocks at stride p (ViT; Dosovitskiy et al., 2021; Xiao et al., 2021).

    tokens = Stem(x)                                 patchify or convolutional stem, (B, H/p, W/p, C)
    tokens = [cls; flatten(tokens)] + pos_embed      with ``class_token`` (sequence mixers only)
    tokens = Blocks(tokens); tokens = LN(tokens)
    logits = Linear(tokens[:, 0])  ('token')  or  Linear(mean(tokens))  ('avg')

Without a class token the grid stays ``(B, H, W, C)``, so grid mixers (windows, convolutions) also
work isotropically. The learned position table is resampled (bicubic) when the input size differs
from ``img_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import register_notrace_function, resample_abs_pos_embed, resample_abs_pos_embed_nhwc
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..blocks import MetaBlock
from ..config import ModelConfig
from ..errors import check_choice
from ..linear import Linear
from ..mixers import MIXERS
from ..stems import Stem
from .base import MixerNet, drop_path_rates
from .resolve import stage_context


class IsotropicNet(MixerNet):
    trunk = "blocks"
    classifier = "head"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        cfg = self.config
        dim, depth, mixer_cfg = cfg.dims[0], cfg.depths[0], cfg.stage_mixers()[0]
        self.num_features = self.head_hidden_size = dim
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.global_pool = cfg.head
        self.grid = cfg.grid
        self.stem = Stem(cfg.stem, cfg.in_chans, dim, cfg.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        if not cfg.pos_embed:
            self.pos_embed = None
        elif cfg.class_token:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid, dim))
        rates = drop_path_rates(cfg.drop_path, depth)
        self.blocks = nn.Sequential(*[
            MetaBlock(dim, MIXERS[mixer_cfg.name](stage_context(cfg, 0, j), **mixer_cfg.args),
                      mlp_ratio=cfg.stage_mlp_ratios()[0], drop_path=rates[j], layer_scale=cfg.layer_scale,
                      norm1=cfg.norm1, norm2=cfg.norm2, norm_eps=cfg.norm_eps)
            for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.head = Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        p = cfg.stem.patch_size
        self.feature_info = [{"num_chs": dim, "reduction": p, "module": f"blocks.{j}"} for j in range(depth)]
        self._init_weights()

    # ---- token handling ------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        return embed_tokens(self.stem(x), self.cls_token, self.pos_embed, self.grid)

    def _grid(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Tokens -> ``(B, C, h, w)`` without prefix tokens."""
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2)
        return x[:, self.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, *hw)

    # ---- timm model contract -----------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = self._new_linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_global_pool(self, global_pool: str) -> None:
        """'token' (class token; only with one), 'avg' (mean over the patch tokens) or '' (no pooling:
        ``forward_head`` returns every token)."""
        allowed = ("token", "avg", "") if self.cls_token is not None else ("avg", "")
        check_choice("global_pool", global_pool, allowed)
        self.global_pool = global_pool

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^cls_token|^pos_embed|^stem", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x.reshape(x.shape[0], -1, x.shape[-1])[:, self.num_prefix_tokens:].mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs as grids (timm API; prefix tokens dropped). ``output_fmt`` 'NCHW' or 'NLC'."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is invalid: allowed values are ['NCHW', 'NLC']")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        hw = (x.shape[-2] // self.stem.patch_size, x.shape[-1] // self.stem.patch_size)
        x = self._embed(x)
        hw = (x.shape[1], x.shape[2]) if x.dim() == 4 else hw
        out = []
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                y = self.norm(x) if norm else x
                g = self._grid(y, hw)
                out.append(g if output_fmt == "NCHW" else g.flatten(2).transpose(1, 2))
        if intermediates_only:
            return out
        return self.norm(x), out


@register_notrace_function  # shape-dependent (table resampling): a leaf for FX (public name, see torch.fx)
def embed_tokens(x: Tensor, cls_token: Tensor | None, pos_embed: Tensor | None, grid: tuple[int, int]) -> Tensor:
    """Stem grid ``(B, h, w, C)`` -> tokens: ``[cls; flatten(x)] + pos`` with a class token, else the grid plus
    its position table; the table (built for ``grid``) is resampled bicubically when h x w differs."""
    b, h, w, c = x.shape
    if cls_token is None:
        return x if pos_embed is None else x + resample_abs_pos_embed_nhwc(pos_embed, [h, w])
    x = torch.cat([cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
    if pos_embed is not None:
        x = x + resample_abs_pos_embed(pos_embed, [h, w], list(grid), num_prefix_tokens=1)
    return x
