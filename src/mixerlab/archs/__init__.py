"""Macro-architectures; :func:`build_model` turns a :class:`ModelConfig` into a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import check_choice
from .base import MixerNet
from .hierarchical import HierarchicalNet
from .isotropic import IsotropicNet
from .resolve import resolve_config

ARCH_CLASSES: dict[str, type[MixerNet]] = {"hierarchical": HierarchicalNet, "isotropic": IsotropicNet}


def build_model(cfg: ModelConfig | dict[str, Any] | str | Path) -> MixerNet:
    """Build a backbone from a config object, a plain dict or a YAML file; the architecture validates
    and resolves it once (:func:`resolve_config`) before any module is built."""
    if isinstance(cfg, (str, Path)):
        cfg = ModelConfig.from_yaml(cfg)
    elif isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    check_choice("arch", cfg.arch, sorted(ARCH_CLASSES))
    return ARCH_CLASSES[cfg.arch](cfg)


__all__ = ["ARCH_CLASSES", "HierarchicalNet", "IsotropicNet", "MixerNet", "build_model", "resolve_config"]
