"""Named models: a table of configs, each registered in timm as a thin entry point.

``model_config(name, **overrides)`` returns the (validated) config of a named model with
overrides applied; ``create_model`` builds it; after ``import mixerlab`` every name also works
with ``timm.create_model``. Overrides are config fields (``img_size``, ``in_chans``,
``num_classes``, ``depths``, ``drop_path`` or timm's ``drop_path_rate``, ...); any other keyword
is an argument of the model's mixer (``window_size=4``, ``attn_act='relu'``, ``kernel_size=5``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import sys
from typing import Any

from timm.models import register_model

from ..archs import MixerNet, build_model
from ..config import ConfigError, MixerConfig, ModelConfig, StemConfig
from . import dwnet, early_conv, peers, stm_eval

MODEL_CONFIGS: dict[str, ModelConfig] = {}
for _source in (early_conv, stm_eval, dwnet, peers):
    MODEL_CONFIGS.update(_source.configs())

# Keywords timm.create_model passes to every entry point; they carry no architecture.
_TIMM_KWARGS = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}
_ALIASES = {"drop_path_rate": "drop_path"}


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in MODEL_CONFIGS if fnmatch.fnmatch(n, pattern))


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named model with ``overrides`` applied and validated."""
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"model={name!r} is unknown: see mixerlab.list_models() (e.g. {list_models()[:4]})")
    return apply_overrides(MODEL_CONFIGS[name], **overrides).validate()


def apply_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    top: dict[str, Any] = {}
    mixer_args = dict(cfg.mixer.args)
    for key, value in overrides.items():
        key = _ALIASES.get(key, key)
        if key == "mixer" and isinstance(value, dict):
            top["mixer"] = MixerConfig(value.get("name", cfg.mixer.name), {**mixer_args, **value.get("args", {})})
            mixer_args = top["mixer"].args
        elif key == "stem" and isinstance(value, dict):
            top["stem"] = dataclasses.replace(cfg.stem, **value) if "name" not in value else StemConfig(**value)
        elif key in fields:
            top[key] = value
        else:
            mixer_args[key] = value
    mixer = top.pop("mixer", cfg.mixer)
    return dataclasses.replace(cfg, **top, mixer=MixerConfig(mixer.name, mixer_args))


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> MixerNet:
    """Build a named model (see :func:`list_models`) with optional overrides."""
    if pretrained:
        raise ConfigError(f"pretrained=True is invalid for {name!r}: mixerlab ships no weights; "
                          "train one or map timm weights with mixerlab.load_timm_weights")
    for k in _TIMM_KWARGS:
        overrides.pop(k, None)
    return build_model(model_config(name, **overrides))


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> MixerNet:
        return create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"mixerlab model {name!r}; config: mixerlab.model_config({name!r})."
    setattr(sys.modules[__name__], name, entry)
    register_model(entry)


for _name in MODEL_CONFIGS:
    _register(_name)

__all__ = ["MODEL_CONFIGS", "apply_overrides", "create_model", "list_models", "model_config"]
