"""Load timm weights into mixerlab's rebuilds of timm models (SPEC 6).

Supported pairs (timm model -> mixerlab model, see :data:`mixerlab.zoo.peers.TIMM_PEERS`):

====================================  ====================  =============================================
timm                                  mixerlab              what is renamed
====================================  ====================  =============================================
``swin_tiny_patch4_window7_224``      ``swin_tiny_ml``      ``patch_embed`` -> ``stem``, ``layers.i`` ->
(``SwinTransformer``)                                       ``stages.i``, ``attn`` -> ``mixer``
``vit_small_patch16_224``             ``vit_small_ml``      ``patch_embed`` -> ``stem``, ``attn`` -> ``mixer``
(``VisionTransformer``)
``convnext_tiny`` (``ConvNeXt``)      ``convnext_tiny_ml``  ``stem.0/1`` -> ``stem.proj/norm``,
                                                            ``downsample.0/1`` -> ``downsample.norm/conv``,
                                                            ``conv_dw`` -> ``mixer.dw``, ``gamma`` ->
                                                            ``ls.gamma``; 1x1-conv MLP weights
                                                            (``conv_mlp=True``) -> Linear
====================================  ====================  =============================================

Any size of the same families maps the same way (the names do not depend on depth or width);
``load_state_dict(strict=True)`` then rejects any structural difference, and shapes are checked
first so that the error lists every missing, unexpected and mis-shaped key at once. With the
weights copied, both models compute the same function (tested to 1e-4 on the logits); the one
documented exception is Swin on maps that need window padding, where mixerlab masks the padded
keys and timm does not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .archs import MixerNet
from .config import ModelConfig

StateDict = dict[str, Tensor]
# (timm pattern, mixerlab replacement) pairs, applied in order with re.sub to every key.
Rules = list[tuple[str, str]]

SWIN_RULES: Rules = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.", r"stages.\1."),
    (r"\.blocks\.(\d+)\.attn\.", r".blocks.\1.mixer."),
]
VIT_RULES: Rules = [
    (r"^patch_embed\.", "stem."),
    (r"^blocks\.(\d+)\.attn\.", r"blocks.\1.mixer."),
]
CONVNEXT_RULES: Rules = [
    (r"^stem\.0\.", "stem.proj."),
    (r"^stem\.1\.", "stem.norm."),
    (r"\.downsample\.0\.", ".downsample.norm."),
    (r"\.downsample\.1\.", ".downsample.conv."),
    (r"\.conv_dw\.", ".mixer.dw."),
    (r"\.gamma$", ".ls.gamma"),
]


def _swin(sd: StateDict) -> StateDict:
    return _rename(sd, SWIN_RULES)


def _vit(sd: StateDict) -> StateDict:
    return _rename(sd, VIT_RULES)


def _convnext(sd: StateDict) -> StateDict:
    out = _rename(sd, CONVNEXT_RULES)
    # timm's conv_mlp=True variant stores the MLP as 1x1 convs (out, in, 1, 1); ours is Linear (out, in).
    return {k: v.flatten(1) if re.search(r"\.mlp\.fc[12]\.weight$", k) and v.dim() == 4 else v
            for k, v in out.items()}


# family -> (timm class, key that only that timm family has, mixerlab name, mapping)
FAMILIES: dict[str, tuple[str, str, str, Callable[[StateDict], StateDict]]] = {
    "swin": ("SwinTransformer", r"^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$",
             "swin_tiny_ml", _swin),
    "vit": ("VisionTransformer", r"^blocks\.\d+\.attn\.qkv\.weight$", "vit_small_ml", _vit),
    "convnext": ("ConvNeXt", r"^stages\.\d+\.blocks\.\d+\.conv_dw\.weight$", "convnext_tiny_ml", _convnext),
}
SUPPORTED = ", ".join(f"timm {cls} -> mixerlab {ml}" for cls, _, ml, _ in FAMILIES.values())


def _rename(sd: StateDict, rules: Rules) -> StateDict:
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def mixerlab_family(cfg: ModelConfig) -> str | None:
    """Which timm family a mixerlab config rebuilds, or None when it is none of them."""
    if cfg.arch == "isotropic":
        ok = cfg.mixer.name == "attention" and cfg.stem.name == "patch" and cfg.class_token and cfg.pos_embed
        return "vit" if ok else None
    if cfg.stem.name != "patch_norm":
        return None
    if cfg.block == "convnext" and cfg.downsample == "ln_conv2x2" and cfg.head == "pool_norm":
        return "convnext"
    if (cfg.block == "metaformer" and cfg.mixer.name == "window" and cfg.downsample == "patch_merging"
            and cfg.head == "norm_pool" and cfg.norm1 == "ln" and cfg.norm2 == "ln"):
        return "swin"
    return None


def timm_family(sd: Mapping[str, Tensor]) -> str | None:
    """Which supported timm family a state dict comes from (by keys only that family has)."""
    for family, (_, marker, _, _) in FAMILIES.items():
        if any(re.match(marker, k) for k in sd):
            return family
    return None


def load_timm_weights(model: MixerNet, timm_model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> MixerNet:
    """Copy a timm model's weights (a module or its state dict) into ``model``; return ``model``.

    Raises ValueError when the pair is unsupported (naming the supported pairs) or when the
    renamed state dict does not fit ``model`` (listing missing, unexpected and mis-shaped keys).
    """
    src = timm_model_or_state_dict
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"model={type(model).__name__} is invalid: a mixerlab model (with a ModelConfig) is "
                         f"needed; supported pairs: {SUPPORTED}")
    if isinstance(src, nn.Module):
        src_name = type(src).__name__
        sd = src.state_dict()
    elif isinstance(src, Mapping):
        src_name = "state dict"
        sd = dict(src)
    else:
        raise ValueError(f"timm_model_or_state_dict={type(src).__name__} is invalid: pass a timm nn.Module "
                         "or its state dict")
    ours, theirs = mixerlab_family(cfg), timm_family(sd)
    if ours is None or theirs is None or ours != theirs:
        ours_txt = f"a {ours} rebuild" if ours else f"no timm rebuild (arch={cfg.arch}, block={cfg.block}, " \
                                                    f"mixer={cfg.mixer.name}, stem={cfg.stem.name})"
        theirs_txt = f"timm {FAMILIES[theirs][0]}" if theirs else "not a supported timm model"
        raise ValueError(f"cannot load {src_name} ({theirs_txt}) into a mixerlab model that is {ours_txt}; "
                         f"supported pairs: {SUPPORTED}")
    mapped = FAMILIES[ours][3](sd)
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    mismatched = [f"{k}: timm {tuple(mapped[k].shape)} vs mixerlab {tuple(target[k].shape)}"
                  for k in sorted(set(target) & set(mapped)) if mapped[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"timm {FAMILIES[ours][0]} weights do not fit this mixerlab model (compare the configs, "
                         f"e.g. depths/dims/img_size/window_size): missing keys {missing}, unexpected keys "
                         f"(after renaming) {unexpected}, shape mismatches {mismatched}")
    with torch.no_grad():
        model.load_state_dict(mapped, strict=True)
    return model
