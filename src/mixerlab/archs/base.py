"""What every mixerlab architecture shares: init, pretrained_cfg, weight-decay exclusions and the
parts of timm's model contract that do not depend on the macro-architecture."""

from __future__ import annotations

import fnmatch
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features import feature_take_indices
from torch import nn

from ..config import ModelConfig
from ..init import init_model
from ..linear import Linear
from ..mixers import Mixer
from .resolve import resolve_config

# Parameters that are tables, not weights: excluded from weight decay (with all 1-D params).
NO_DECAY_PATTERNS = ("*pos_embed*", "*cls_token*", "*relative_position_bias_table*", "*rel_*")


def pretrained_cfg_for(cfg: ModelConfig, classifier: str) -> dict[str, Any]:
    h, w = cfg.image_hw
    first_conv = "stem.proj" if cfg.stem.name in ("patch", "patch_norm") else "stem.proj.0"
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif cfg.in_chans == 3:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:  # no published statistics: centre [0, 1] pixels; data code may override per dataset
        mean, std = (0.5,) * cfg.in_chans, (0.5,) * cfg.in_chans
    pool_size = cfg.stage_grid(len(cfg.depths) - 1)  # the unpooled final map at input_size
    return {"input_size": (cfg.in_chans, h, w), "mean": mean, "std": std, "num_classes": cfg.num_classes,
            "pool_size": pool_size,
            "first_conv": first_conv, "classifier": classifier, "crop_pct": 0.875 if h >= 128 else 1.0,
            "interpolation": "bicubic", "fixed_input_size": False, "license": "apache-2.0"}


def drop_path_rates(rate: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over ``n`` blocks (plain Python,
    so models also build on the meta device)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class MixerNet(nn.Module):
    """Base class of mixerlab backbones (holds the config and timm's bookkeeping)."""

    config: ModelConfig
    feature_info: list[dict[str, Any]]
    trunk: str  # attribute holding the sequence forward_intermediates indexes ("stages" or "blocks")
    classifier: str  # qualified name of the final Linear

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = resolve_config(cfg)  # the one validation of a model's config
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.grad_checkpointing = False
        self.pretrained_cfg = self.default_cfg = pretrained_cfg_for(cfg, self.classifier)

    def _init_weights(self) -> None:
        """The config's init scheme (:mod:`mixerlab.init`), then each mixer's own special init."""
        init_model(self, self.config.init)

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if any(fnmatch.fnmatch(n, p) for p in NO_DECAY_PATTERNS)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what follows the last taken intermediate (timm API)."""
        seq = getattr(self, self.trunk)
        take, max_index = feature_take_indices(len(seq), indices)
        setattr(self, self.trunk, seq[:max_index + 1])
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.prune_head()
        return take

    def prune_head(self) -> None:
        """Remove the classifier and anything of the head before it (timm's contract: a pruned model
        leaves no parameter unused)."""
        self.reset_classifier(0)

    def set_global_pool(self, global_pool: str) -> None:
        raise NotImplementedError  # each architecture pools its own way

    def _new_linear(self, c_in: int, c_out: int) -> Linear:
        """A classifier Linear on the model's device and dtype, in its train/eval mode, initialised by its scheme."""
        ref = next(self.parameters())
        fc = Linear(c_in, c_out, device=ref.device, dtype=ref.dtype).train(self.training)
        if self.config.init == "pycls_vit":
            nn.init.zeros_(fc.weight)
        else:
            nn.init.trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)
        return fc

    def mixers(self) -> list[tuple[str, Mixer]]:
        """Every spatial token mixer with its qualified name, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, Mixer)]
