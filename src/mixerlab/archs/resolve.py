"""The mixer-dependent half of validation, done once where models are built.

:meth:`ModelConfig.validate` checks structure; :func:`resolve_config` adds what needs the mixer
registry: every stage's mixer name and arguments at that stage's token grid, after each mixer has
fitted its arguments to the grid (:meth:`Mixer.fit`, e.g. DMA's dilations on a 4x4 map). The result is
the *resolved* config a model holds as ``model.config``: where fitting changed a stage's arguments, the
mixer becomes a per-stage list carrying the adapted values, so they are visible in every record and
rebuilding from the resolved config reproduces the model exactly.
"""

from __future__ import annotations

import copy
import dataclasses

from ..config import MixerConfig, ModelConfig
from ..errors import fail
from ..mixers import MixerContext, mixer_class, resolve_mixer_args


def stage_context(cfg: ModelConfig, stage: int, index: int = 0) -> MixerContext:
    """The context of block ``index`` of stage ``stage`` (width, heads, grid at ``img_size``)."""
    return MixerContext(dim=cfg.dims[stage], num_heads=cfg.heads[stage], stage=stage, index=index,
                        resolution=cfg.stage_grid(stage))


def resolve_config(cfg: ModelConfig) -> ModelConfig:
    """Validate ``cfg`` completely and return its resolved copy (see the module docstring)."""
    cfg.validate()
    per_stage = isinstance(cfg.mixer, (list, tuple))
    given = cfg.stage_mixers()
    fitted = []
    for i, m in enumerate(given):
        where = f"mixer[{i}]" if per_stage else "mixer"
        cls = mixer_class(m.name, f"{where}.name")
        if cfg.arch == "isotropic" and cfg.class_token and cls.needs_grid:
            fail(f"{where}.name", m.name, "this mixer needs a token grid: set class_token=false and head='avg' "
                 "(or use a sequence mixer such as 'attention')")
        fitted.append(MixerConfig(m.name, resolve_mixer_args(m.name, m.args, stage_context(cfg, i), where)))
    changed = any(f.args != m.args for f, m in zip(fitted, given, strict=True))
    mixer = fitted if per_stage or changed else MixerConfig(given[0].name, fitted[0].args)
    # A deep copy: zoo tables and callers' configs are never aliased by a model.
    return copy.deepcopy(dataclasses.replace(cfg, mixer=mixer))
