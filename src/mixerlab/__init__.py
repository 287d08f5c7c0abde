"""mixerlab: Vision Transformers and ConvNets as one family of ``mixer + MLP`` backbones.

Importing this package registers every named model in timm's registry, so
``timm.create_model("u_swin_tiny")`` works after ``import mixerlab``.
"""

from __future__ import annotations

from .archs import MixerNet, build_model
from .complexity import complexity
from .config import ConfigError, MixerConfig, ModelConfig, StemConfig
from .mixers import MIXERS, build_mixer
from .peers import load_timm_weights
from .zoo import create_model, list_models, model_config

__version__ = "0.1.0"

__all__ = ["MIXERS", "ConfigError", "MixerConfig", "MixerNet", "ModelConfig", "StemConfig", "build_mixer",
           "build_model", "complexity", "create_model", "list_models", "load_timm_weights", "model_config"]
