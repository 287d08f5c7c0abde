"""Weight initialisation schemes: ``ModelConfig.init`` names one, each zoo uses its authors'.

The scheme matters for what mixerlab measures (Xiao et al.'s optimisation-stability study compares
stems under pycls's init), so it is part of the config rather than one rule for every model:

* ``trunc_normal`` -- every Conv2d and Linear weight truncated-normal (std .02), biases zero:
  STM-Evaluation's unified models and ConvNeXt (SPEC 3).
* ``trunc_normal_linear`` -- Linear weights truncated-normal (std .02), biases zero; convolutions keep
  PyTorch's default (Kaiming-uniform): Swin, DWNet (DemystifyLocalViT ``_init_weights``), timm's ViT.
* ``pycls_vit`` -- pycls's ``init_weights_vit`` (Xiao et al.): patchify stem truncated-normal
  sqrt(1/fan_in); conv-stem k x k convs PyTorch default, its final 1x1 normal sqrt(2/out); attention
  projections (q/k/v) xavier-uniform, the output projection PyTorch default, biases zero; MLP linears
  xavier-uniform with bias N(0, 1e-6); classifier and class token zero; position table N(0, .02).
  Linears pycls has no rule for (e.g. PatchMerging) get xavier-uniform, convolutions PyTorch default.

Position tables and class tokens owned by the architecture: N(0, .02) under ``pycls_vit``, else
truncated-normal .02 and N(0, 1e-6) (timm's ViT). Norm layers keep PyTorch's default everywhere.
A mixer's own special init (:meth:`Mixer.init_weights`: zero offsets, relative tables) runs after the
scheme, and :func:`init_mixer` is the same code for a mixer alone and inside a model.
"""

from __future__ import annotations

import math

from timm.layers import Mlp
from torch import nn

from .errors import check_choice

SCHEMES = ("trunc_normal", "trunc_normal_linear", "pycls_vit")
OUTPUT_PROJECTIONS = ("proj", "output_proj")  # a mixer's final Linear (pycls keeps its default weight)


def _trunc(m: nn.Conv2d | nn.Linear, std: float = 0.02) -> None:
    nn.init.trunc_normal_(m.weight, std=std)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _xavier(m: nn.Linear) -> None:
    nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _generic(m: nn.Module, scheme: str) -> None:
    """The scheme's rule for a Conv2d / Linear with no special role."""
    if scheme == "trunc_normal" and isinstance(m, (nn.Conv2d, nn.Linear)):
        _trunc(m)
    elif scheme == "trunc_normal_linear" and isinstance(m, nn.Linear):
        _trunc(m)
    elif scheme == "pycls_vit" and isinstance(m, nn.Linear):
        _xavier(m)


def init_mixer(mixer: nn.Module, scheme: str = "trunc_normal") -> None:
    """Initialise one mixer under ``scheme``, then apply its own special init."""
    check_choice("init", scheme, SCHEMES)
    for name, m in mixer.named_modules():
        if scheme == "pycls_vit" and isinstance(m, nn.Linear) and name in OUTPUT_PROJECTIONS:
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            _generic(m, scheme)
    mixer.init_weights()


def init_model(model: nn.Module, scheme: str) -> None:
    """Initialise a mixerlab network (a ``MixerNet``: its ``mixers()`` are initialised by
    :func:`init_mixer`); modules are visited in order."""
    check_choice("init", scheme, SCHEMES)
    pycls = scheme == "pycls_vit"
    stem = getattr(model, "stem", None)
    stem_convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)] if stem is not None else []
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    mixers = {id(m) for _, m in model.mixers()}
    inside_mixer: set[int] = set()
    for m in model.modules():
        if id(m) in inside_mixer:
            continue
        if id(m) in mixers:
            inside_mixer.update(id(s) for s in m.modules())
            init_mixer(m, scheme)
        elif pycls and isinstance(m, Mlp):
            inside_mixer.update(id(s) for s in m.modules())  # handled here, skip its children
            for fc in (m.fc1, m.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        elif pycls and m is classifier and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        elif pycls and any(m is c for c in stem_convs):
            if len(stem_convs) == 1:  # patchify
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                _trunc(m, std=math.sqrt(1.0 / fan_in))
            elif m is stem_convs[-1]:  # the conv stem's final 1x1
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.out_channels))
                nn.init.zeros_(m.bias)
        else:
            _generic(m, scheme)
    pos, cls = getattr(model, "pos_embed", None), getattr(model, "cls_token", None)
    if isinstance(pos, nn.Parameter):
        nn.init.normal_(pos, std=0.02) if pycls else nn.init.trunc_normal_(pos, std=0.02)
    if isinstance(cls, nn.Parameter):
        nn.init.zeros_(cls) if pycls else nn.init.normal_(cls, std=1e-6)
