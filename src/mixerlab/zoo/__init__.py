"""Named models: a table of configs, each registered in timm as a thin entry point.

``model_config(name, **overrides)`` returns the resolved config of a named model with overrides
applied; ``create_model`` builds it; after ``import mixerlab`` every name also works with
``timm.create_model``, through timm's own ``build_model_with_cfg``, so timm's keywords behave as for
timm's models: ``features_only`` / ``out_indices`` / ``feature_cls`` (a feature extractor over
``forward_intermediates``, default ``feature_cls='getter'``), ``device`` / ``dtype`` (modules are
created there), ``global_pool``, ``pretrained_cfg_overlay``.

Every other keyword is a config field (``img_size``, ``in_chans``, ``num_classes``, ``depths``,
``drop_path`` or timm's ``drop_path_rate``, ``init``, ...) or else an argument of the model's mixer
(``window_size=4``, ``attn_act='relu'``). With per-stage mixers a mixer argument goes to every stage
whose mixer takes it, and a keyword no stage's mixer takes is a ``TypeError`` (as Python's own
unexpected-keyword error) that lists the allowed ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import sys
from typing import Any

import torch
from timm.models import build_model_with_cfg, register_model
from timm.models._builder import pretrained_cfg_for_features
from torch import nn

from ..archs import ARCH_CLASSES, MixerNet, build_model, resolve_config
from ..archs.base import pretrained_cfg_for
from ..config import MixerConfig, ModelConfig, StemConfig
from ..errors import ConfigError, UnknownArgumentError, check_choice
from ..mixers import MIXERS
from . import dwnet, early_conv, hybrid, peers, stm_eval

MODEL_CONFIGS: dict[str, ModelConfig] = {}
for _source in (early_conv, stm_eval, dwnet, hybrid, peers):
    MODEL_CONFIGS.update(_source.configs())

_ALIASES = {"drop_path_rate": "drop_path"}
_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in MODEL_CONFIGS if fnmatch.fnmatch(n, pattern))


def named_config(name: str) -> ModelConfig:
    """The zoo's config of ``name`` as published (unresolved; see :func:`model_config`)."""
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"model={name!r} is unknown: see mixerlab.list_models() (e.g. {list_models()[:4]})")
    return MODEL_CONFIGS[name]


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The resolved config of a named model with ``overrides`` applied (what ``model.config`` will be)."""
    return resolve_config(apply_overrides(named_config(name), **overrides))


def _mixer_list(value: Any, n: int) -> MixerConfig | list[MixerConfig]:
    if isinstance(value, MixerConfig):
        return value
    if isinstance(value, dict):
        return MixerConfig(value.get("name", "attention"), dict(value.get("args", {})))
    if isinstance(value, (list, tuple)):
        return [_mixer_list(v, n) for v in value]  # type: ignore[misc]
    raise ConfigError(f"mixer={value!r} is invalid: a mixer config {{name, args}} or a list of {n} (one per stage)")


def apply_overrides(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """``cfg`` with config fields replaced and mixer arguments merged (not validated: models resolve)."""
    top: dict[str, Any] = {}
    mixer_args: dict[str, Any] = {}
    for key, value in overrides.items():
        key = _ALIASES.get(key, key)
        if key == "mixer" and isinstance(value, dict) and not isinstance(cfg.mixer, list) \
                and value.get("name", cfg.mixer.name) == cfg.mixer.name:
            # {"args": {...}} (or the same name) updates the mixer's arguments
            mixer_args.update(value.get("args", {}))
        elif key == "mixer":
            top["mixer"] = _mixer_list(value, len(cfg.depths))
        elif key == "stem" and isinstance(value, dict):
            top["stem"] = dataclasses.replace(cfg.stem, **value) if "name" not in value else StemConfig(**value)
        elif key in _FIELDS:
            top[key] = value
        else:
            mixer_args[key] = value
    out = dataclasses.replace(cfg, **top)
    return _with_mixer_args(out, mixer_args) if mixer_args else out


def _with_mixer_args(cfg: ModelConfig, args: dict[str, Any]) -> ModelConfig:
    """Merge mixer ``args`` into every stage whose mixer takes them; unknown names are a TypeError."""
    stages = cfg.stage_mixers()
    for m in stages:
        check_choice("mixer.name", m.name, sorted(MIXERS))
    accepted = {i: {k: v for k, v in args.items() if k in MIXERS[m.name].allowed_args()} for i, m in enumerate(stages)}
    taken = set().union(*accepted.values())
    unknown = sorted(set(args) - taken)
    if unknown:
        allowed = sorted(_FIELDS | set().union(*(MIXERS[m.name].allowed_args() for m in stages)))
        raise UnknownArgumentError(f"{unknown} are neither config fields nor arguments of the mixers "
                                   f"{sorted({m.name for m in stages})}: allowed are {allowed}")
    if not isinstance(cfg.mixer, list):
        return dataclasses.replace(cfg, mixer=MixerConfig(cfg.mixer.name, {**cfg.mixer.args, **args}))
    per_stage = [MixerConfig(m.name, {**m.args, **accepted[i]}) for i, m in enumerate(stages)]
    return dataclasses.replace(cfg, mixer=per_stage)


def _feature_cfg(cfg: ModelConfig) -> dict[str, Any]:
    # Hierarchical: every stage; isotropic: the last three blocks (timm's ViT default).
    out = tuple(range(len(cfg.depths))) if cfg.arch == "hierarchical" else 3
    return {"feature_cls": "getter", "out_indices": out}


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a named model (see :func:`list_models`) with optional overrides and timm's keywords
    (see the module docstring); a ``MixerNet``, or timm's feature wrapper with ``features_only``."""
    if pretrained:
        raise ConfigError(f"pretrained=True is invalid for {name!r}: mixerlab ships no weights; "
                          "train one or map timm weights with mixerlab.load_timm_weights")
    base = named_config(name)
    kwargs.pop("cache_dir", None)  # no hub: nothing is downloaded
    built: list[tuple[MixerNet, dict[str, Any]]] = []

    def build(*, device: Any = None, dtype: torch.dtype | None = None, global_pool: str | None = None,
              **overrides: Any) -> MixerNet:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = build_model(apply_overrides(base, **overrides))
        if dtype is not None:
            model.to(dtype=dtype)
        if global_pool is not None:
            model.set_global_pool(global_pool)
        built.append((model, dict(model.pretrained_cfg)))
        return model

    model = build_model_with_cfg(build, name, False, feature_cfg=_feature_cfg(base), **kwargs)
    # timm set the registry's 224-px cfg; the model's own describes the input it was built for.
    net, own = built[0]
    own.update(kwargs.get("pretrained_cfg_overlay") or {})
    net.pretrained_cfg = net.default_cfg = own
    if model is not net:  # the features_only wrapper
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(own)
    return model


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"mixerlab model {name!r}; config: mixerlab.model_config({name!r})."
    setattr(sys.modules[__name__], name, entry)
    register_model(entry)


# timm reads a module's ``default_cfgs`` when registering its entry points (pretrained_cfg, pool_size, ...).
default_cfgs = {n: pretrained_cfg_for(c, ARCH_CLASSES[c.arch].classifier) for n, c in MODEL_CONFIGS.items()}
for _name in MODEL_CONFIGS:
    _register(_name)

__all__ = ["MODEL_CONFIGS", "apply_overrides", "create_model", "list_models", "model_config", "named_config"]
