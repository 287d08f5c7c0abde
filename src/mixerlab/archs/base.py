"""What every mixerlab architecture shares: init, pretrained_cfg, weight-decay exclusions and the
parts of timm's model contract that do not depend on the macro-architecture."""

from __future__ import annotations

import fnmatch
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features import feature_take_indices
from torch import nn

from ..config import ModelConfig
from ..mixers import Mixer

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
    return {"input_size": (cfg.in_chans, h, w), "mean": mean, "std": std, "num_classes": cfg.num_classes,
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
        cfg.validate()
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.grad_checkpointing = False
        self.pretrained_cfg = self.default_cfg = pretrained_cfg_for(cfg, self.classifier)

    def _init_weights(self) -> None:
        """Truncated normal (std .02) for conv / linear weights, zero biases (SPEC 3), then each
        mixer's own special init (zero-initialised offsets and the like) on top."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Mixer):
                m.init_weights()

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
            self.reset_classifier(0)
        return take

    def mixers(self) -> list[tuple[str, Mixer]]:
        """Every spatial token mixer with its qualified name, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, Mixer)]
