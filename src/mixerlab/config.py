"""Plain, validated configuration of a mixerlab backbone.

A model is fully described by a :class:`ModelConfig` (stem x mixer x block x macro-architecture).
Configs round-trip through dicts and YAML so that studies and reports can store them, and
:meth:`ModelConfig.validate` rejects every structurally inconsistent configuration *before* a single
module is built, with an error that names the field, the value and what is allowed. What depends on
the mixers (names, their arguments at each stage's grid) is checked where models are built
(:func:`mixerlab.archs.resolve_config`), so this module knows nothing about mixers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, check_choice, check_int, check_ints, check_keys, check_number
from .errors import fail as _fail

ARCHS = ("hierarchical", "isotropic")
STEMS = ("patch", "patch_norm", "conv", "unified")
BLOCKS = ("metaformer", "convnext")
NORMS = ("ln", "bn", "none")
DOWNSAMPLES = ("conv3x3", "patch_merging", "ln_conv2x2")
HEADS = ("conv_bn", "norm_pool", "pool_norm", "token", "avg")
INITS = ("trunc_normal", "trunc_normal_linear", "pycls_vit")  # see mixerlab.init


@dataclass
class StemConfig:
    """How pixels become tokens.

    * ``patch``: one p x p conv with stride p (ViT).
    * ``patch_norm``: p x p conv with stride p followed by LayerNorm (Swin / DWNet / ConvNeXt).
    * ``conv``: Xiao et al.'s convolutional stem, given as ``kernels`` / ``strides`` / ``channels``:
      every conv but the last is k x k (no bias) + BatchNorm + ReLU, the last a 1x1 conv with bias
      (it must have kernel 1); the product of strides must equal ``patch_size``.
    * ``unified``: STM-Evaluation's two stride-2 3x3 convs with LayerNorm and GELU (patch 4).
    """

    name: str = "patch"
    patch_size: int = 16
    kernels: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)

    def validate(self, out_dim: int) -> None:
        check_choice("stem.name", self.name, STEMS)
        check_int("stem.patch_size", self.patch_size)
        if self.name == "unified" and self.patch_size != 4:
            _fail("stem.patch_size", self.patch_size, "the unified stem has two stride-2 convs: use 4")
        if self.name != "conv":
            return
        n = len(self.kernels)
        if n < 2 or len(self.strides) != n or len(self.channels) != n:
            _fail("stem.kernels/strides/channels",
                  (self.kernels, self.strides, self.channels),
                  "three lists of the same length >= 2 (k x k convs then a final 1x1 conv)")
        if self.kernels[-1] != 1 or self.strides[-1] != 1:
            _fail("stem.kernels[-1]/strides[-1]", (self.kernels[-1], self.strides[-1]),
                  "the last conv of the conv stem is a 1x1 conv with stride 1")
        check_ints("stem.kernels", self.kernels)
        check_ints("stem.strides", self.strides)
        check_ints("stem.channels", self.channels)
        if any(k % 2 == 0 for k in self.kernels):
            _fail("stem.kernels", self.kernels, "odd positive kernel sizes")
        if math.prod(self.strides) != self.patch_size:
            _fail("stem.strides", self.strides,
                  f"the product of strides ({math.prod(self.strides)}) must equal "
                  f"stem.patch_size={self.patch_size}")
        if self.channels[-1] != out_dim:
            _fail("stem.channels[-1]", self.channels[-1], f"must equal the model width dims[0]={out_dim}")


@dataclass
class MixerConfig:
    """The spatial token mixer: a registered name plus keyword arguments for its class."""

    name: str = "attention"
    args: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "mixer") -> None:
        if not isinstance(self.name, str) or not self.name:
            _fail(f"{where}.name", self.name, "a registered mixer name (see mixerlab.MIXERS)")
        if not isinstance(self.args, dict) or not all(isinstance(k, str) for k in self.args):
            _fail(f"{where}.args", self.args, "a mapping of argument names to values")


@dataclass
class ModelConfig:
    """One backbone of the design space.

    ``arch='hierarchical'``: four (or any number of) stages with downsampling between them.
    ``arch='isotropic'``: one stage (ViT): ``depths``, ``dims`` and ``heads`` have one entry.
    ``mixer`` is one :class:`MixerConfig` for every stage or a list with one per stage (hybrids such
    as convolutions early and attention late; MetaFormer's ``token_mixers``); ``mlp_ratio`` may be one
    number or one per stage; ``layer_scale`` None disables LayerScale. ``init`` names the weight
    initialisation scheme (:mod:`mixerlab.init`), part of the config because training stability
    depends on it (Xiao et al.).
    """

    arch: str = "hierarchical"
    stem: StemConfig = field(default_factory=StemConfig)
    mixer: MixerConfig | list[MixerConfig] = field(default_factory=MixerConfig)
    block: str = "metaformer"
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    dims: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    mlp_ratio: float | list[float] = 4.0
    drop_path: float = 0.0
    layer_scale: float | None = None
    norm1: str = "ln"
    norm2: str = "ln"
    norm_eps: float = 1e-6
    downsample: str = "conv3x3"
    stage_norm: bool = False
    head: str = "conv_bn"
    head_ratio: float = 1.5
    init: str = "trunc_normal"
    class_token: bool = False
    pos_embed: bool = False
    img_size: int | tuple[int, int] = 224
    in_chans: int = 3
    num_classes: int = 1000
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    # ---- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        check_keys(cls, d, "config keys")
        if isinstance(d.get("stem"), dict):
            d["stem"] = _sub(StemConfig, d["stem"], "stem")
        if isinstance(d.get("mixer"), dict):
            d["mixer"] = _sub(MixerConfig, d["mixer"], "mixer")
        elif isinstance(d.get("mixer"), list):
            d["mixer"] = [_sub(MixerConfig, m, f"mixer[{i}]") if isinstance(m, dict) else m
                          for i, m in enumerate(d["mixer"])]
        if isinstance(d.get("img_size"), list):
            d["img_size"] = tuple(d["img_size"])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> ModelConfig:
        return dataclasses.replace(self, **overrides)

    # ---- derived quantities --------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.image_hw
        p = self.stem.patch_size
        return h // p, w // p

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def stage_mixers(self) -> list[MixerConfig]:
        """One mixer config per stage (a single config is shared by every stage)."""
        m = self.mixer
        return list(m) if isinstance(m, (list, tuple)) else [m] * len(self.depths)

    def stage_mlp_ratios(self) -> list[float]:
        r = self.mlp_ratio
        return [float(x) for x in r] if isinstance(r, (list, tuple)) else [float(r)] * len(self.depths)

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> ModelConfig:
        """Raise :class:`ConfigError` for any structural inconsistency; return self otherwise.

        Mixer names and arguments are checked against the registry by
        :func:`mixerlab.archs.resolve_config`, which calls this first."""
        check_choice("arch", self.arch, ARCHS)
        check_choice("block", self.block, BLOCKS)
        check_choice("norm1", self.norm1, NORMS)
        check_choice("norm2", self.norm2, NORMS)
        check_choice("downsample", self.downsample, DOWNSAMPLES)
        check_choice("head", self.head, HEADS)
        check_choice("init", self.init, INITS)
        for name in ("depths", "dims", "heads"):
            check_ints(name, getattr(self, name))
        n = len(self.depths)
        if len(self.dims) != n or len(self.heads) != n:
            _fail("depths/dims/heads", (self.depths, self.dims, self.heads),
                  "three non-empty lists of the same length (one entry per stage)")
        if self.arch == "isotropic" and n != 1:
            _fail("depths", self.depths, "an isotropic model has one stage: give one depth")
        for i, (d, h) in enumerate(zip(self.dims, self.heads, strict=True)):
            if d % h:
                _fail(f"heads[{i}]", h, f"must divide dims[{i}]={d}")
        ratios = self.stage_mlp_ratios()
        if len(ratios) != n or any(r <= 0 for r in ratios):
            _fail("mlp_ratio", self.mlp_ratio, f"a positive number or {n} positive numbers")
        check_number("drop_path", self.drop_path, 0.0, 1.0)
        if self.layer_scale is not None:
            check_number("layer_scale", self.layer_scale, 0.0, low_open=True)
        check_number("norm_eps", self.norm_eps, 0.0, low_open=True)
        check_number("head_ratio", self.head_ratio, 0.0, low_open=True)
        check_int("in_chans", self.in_chans)
        check_int("num_classes", self.num_classes, 0)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and len(v) != self.in_chans:
                _fail(name, v, f"{self.in_chans} values (one per input channel)")
        self.stem.validate(self.dims[0])
        if self.arch == "isotropic":
            check_choice("head", self.head, ("token", "avg"))
            if (self.class_token and self.head != "token") or (self.head == "token" and not self.class_token):
                _fail("head", self.head, "'token' exactly when class_token is true, else 'avg'")
        else:
            check_choice("head", self.head, ("conv_bn", "norm_pool", "pool_norm"))
            if self.class_token:
                _fail("class_token", True, "only isotropic models have a class token")
        # Stages after the first round odd maps up (stride-2 convs pad, PatchMerging pads), so
        # the stem is the only constraint on the image size.
        h, w = self.image_hw
        p = self.stem.patch_size
        if h < p or w < p or h % p or w % p:
            _fail("img_size", self.img_size,
                  f"height and width must be positive multiples of the stem's patch size {p}")
        if isinstance(self.mixer, (list, tuple)):
            if len(self.mixer) != n:
                _fail("mixer", [getattr(m, "name", m) for m in self.mixer],
                      f"one mixer config, or a list of {n} (one per stage)")
            for i, m in enumerate(self.mixer):
                if not isinstance(m, MixerConfig):
                    _fail(f"mixer[{i}]", m, "a mixer config {name, args}")
                m.validate(f"mixer[{i}]")
        elif isinstance(self.mixer, MixerConfig):
            self.mixer.validate()
        else:
            _fail("mixer", self.mixer, "a mixer config {name, args} or a list of them (one per stage)")
        if self.block == "convnext" and any(m.name != "dwconv" for m in self.stage_mixers()):
            _fail("mixer.name", [m.name for m in self.stage_mixers()], "the official ConvNeXt block uses 'dwconv'")
        return self

    def stage_grid(self, stage: int) -> tuple[int, int]:
        """Token grid of a stage at ``img_size`` (stride-2 steps round up)."""
        h, w = self.grid
        for _ in range(stage if self.arch == "hierarchical" else 0):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def _sub(cls: type, d: dict[str, Any], prefix: str) -> Any:
    check_keys(cls, d, f"{prefix} keys")
    return cls(**d)


__all__ = ["ARCHS", "INITS", "ConfigError", "MixerConfig", "ModelConfig", "StemConfig", "check_keys"]
