"""Plain, validated configuration of a mixerlab backbone.

A model is fully described by a :class:`ModelConfig` (stem x mixer x block x macro-architecture).
Configs round-trip through dicts and YAML so that studies and reports can store them, and
:meth:`ModelConfig.validate` rejects every inconsistent configuration *before* a single module
is built, with an error that names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ARCHS = ("hierarchical", "isotropic")
STEMS = ("patch", "patch_norm", "conv", "unified")
BLOCKS = ("metaformer", "convnext")
NORMS = ("ln", "bn", "none")
DOWNSAMPLES = ("conv3x3", "patch_merging", "ln_conv2x2")
HEADS = ("conv_bn", "norm_pool", "pool_norm", "token", "avg")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names field, value and what is allowed."""


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field_name}={value!r} is invalid: {allowed}")


def check_choice(field_name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        _fail(field_name, value, f"allowed values are {sorted(allowed)}")


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
        if self.patch_size < 1:
            _fail("stem.patch_size", self.patch_size, "must be a positive integer")
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
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
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


@dataclass
class ModelConfig:
    """One backbone of the design space.

    ``arch='hierarchical'``: four (or any number of) stages with downsampling between them.
    ``arch='isotropic'``: one stage (ViT): ``depths``, ``dims`` and ``heads`` have one entry.
    ``mlp_ratio`` may be one number or one per stage; ``layer_scale`` None disables LayerScale.
    """

    arch: str = "hierarchical"
    stem: StemConfig = field(default_factory=StemConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
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

    def stage_mlp_ratios(self) -> list[float]:
        r = self.mlp_ratio
        return [float(x) for x in r] if isinstance(r, (list, tuple)) else [float(r)] * len(self.depths)

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> ModelConfig:
        """Raise :class:`ConfigError` for anything that cannot be built; return self otherwise."""
        from .mixers import MIXERS  # late import: mixers import this module

        check_choice("arch", self.arch, ARCHS)
        check_choice("block", self.block, BLOCKS)
        check_choice("norm1", self.norm1, NORMS)
        check_choice("norm2", self.norm2, NORMS)
        check_choice("downsample", self.downsample, DOWNSAMPLES)
        check_choice("head", self.head, HEADS)
        n = len(self.depths)
        if n == 0 or len(self.dims) != n or len(self.heads) != n:
            _fail("depths/dims/heads", (self.depths, self.dims, self.heads),
                  "three non-empty lists of the same length (one entry per stage)")
        if self.arch == "isotropic" and n != 1:
            _fail("depths", self.depths, "an isotropic model has one stage: give one depth")
        for name, values in (("depths", self.depths), ("dims", self.dims), ("heads", self.heads)):
            if any(int(v) != v or v < 1 for v in values):
                _fail(name, values, "positive integers")
        for i, (d, h) in enumerate(zip(self.dims, self.heads, strict=True)):
            if d % h:
                _fail(f"heads[{i}]", h, f"must divide dims[{i}]={d}")
        ratios = self.stage_mlp_ratios()
        if len(ratios) != n or any(r <= 0 for r in ratios):
            _fail("mlp_ratio", self.mlp_ratio, f"a positive number or {n} positive numbers")
        if not 0.0 <= self.drop_path < 1.0:
            _fail("drop_path", self.drop_path, "a rate in [0, 1)")
        if self.layer_scale is not None and self.layer_scale <= 0:
            _fail("layer_scale", self.layer_scale, "a positive initial value, or null to disable")
        if self.in_chans < 1:
            _fail("in_chans", self.in_chans, "a positive number of input channels")
        if self.num_classes < 0:
            _fail("num_classes", self.num_classes, "0 (no classifier) or a positive number")
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
        check_choice("mixer.name", self.mixer.name, sorted(MIXERS))
        mixer_cls = MIXERS[self.mixer.name]
        if self.arch == "isotropic" and self.class_token and mixer_cls.needs_grid:
            _fail("mixer.name", self.mixer.name,
                  "this mixer needs a token grid: set class_token=false and head='avg' "
                  "(or use a sequence mixer such as 'attention')")
        if self.block == "convnext" and self.mixer.name != "dwconv":
            _fail("mixer.name", self.mixer.name, "the official ConvNeXt block uses 'dwconv'")
        for i, (d, hd) in enumerate(zip(self.dims, self.heads, strict=True)):
            mixer_cls.check_args(self.mixer.args, dim=d, num_heads=hd, resolution=self.stage_grid(i), stage=i)
        return self

    def stage_grid(self, stage: int) -> tuple[int, int]:
        """Token grid of a stage at ``img_size`` (stride-2 steps round up)."""
        h, w = self.grid
        for _ in range(stage if self.arch == "hierarchical" else 0):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Reject keys of ``d`` that are not fields of dataclass ``cls``, listing the allowed ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        _fail(what, unknown, f"allowed keys are {sorted(known)}")


def _sub(cls: type, d: dict[str, Any], prefix: str) -> Any:
    check_keys(cls, d, f"{prefix} keys")
    return cls(**d)
