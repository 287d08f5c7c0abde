"""Initialisation schemes (mixerlab.init): each zoo initialises as its authors do, a mixer built alone
as inside a model. Distribution checks use tolerances from the sample size (thousands of weights:
the sample std of n draws is within a few / sqrt(2n) of the true std)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mixerlab
from mixerlab.mixers import MixerContext


def _std_close(w: torch.Tensor, std: float) -> bool:
    return abs(w.std().item() - std) < 5 * std / math.sqrt(2 * w.numel())


def _kaiming_uniform_default(w: torch.Tensor) -> bool:
    """PyTorch's default conv / linear weight init: U(-b, b), b = 1/sqrt(fan_in) (std b/sqrt(3))."""
    fan_in = w[0].numel()
    b = 1 / math.sqrt(fan_in)
    return w.abs().max().item() <= b and _std_close(w, b / math.sqrt(3))


def test_pycls_vit_is_pycls_init() -> None:
    torch.manual_seed(0)
    m = mixerlab.create_model("vit_c_4gf")
    assert m.config.init == "pycls_vit"
    convs = [c for c in m.stem.modules() if isinstance(c, nn.Conv2d)]
    assert all(_kaiming_uniform_default(c.weight) for c in convs[:-1])  # k x k convs: PyTorch default
    assert _std_close(convs[-1].weight, math.sqrt(2 / convs[-1].out_channels)) and not convs[-1].bias.any()
    blk = m.blocks[0]
    qkv, proj = blk.mixer.qkv, blk.mixer.proj
    bound = math.sqrt(6 / (qkv.in_features + qkv.out_features))  # xavier-uniform
    assert qkv.weight.abs().max() <= bound and _std_close(qkv.weight, bound / math.sqrt(3)) and not qkv.bias.any()
    assert _kaiming_uniform_default(proj.weight) and not proj.bias.any()
    assert _std_close(blk.mlp.fc1.bias, 1e-6) and _std_close(blk.mlp.fc2.bias, 1e-6)
    assert not m.head.weight.any() and not m.head.bias.any() and not m.cls_token.any()
    assert _std_close(m.pos_embed, 0.02)
    p = mixerlab.create_model("vit_p_4gf").stem.proj
    assert _std_close(p.weight, math.sqrt(1 / p.weight[0].numel())) and not p.bias.any()


def test_dwnet_keeps_pytorch_default_convs_and_stm_eval_truncates_all() -> None:
    torch.manual_seed(0)
    d = mixerlab.create_model("dwnet_tiny")
    assert d.config.init == "trunc_normal_linear"
    assert _kaiming_uniform_default(d.stages[0].blocks[0].mixer.conv.weight)
    assert _kaiming_uniform_default(d.stem.proj.weight)
    assert _std_close(d.stages[0].blocks[0].mlp.fc1.weight, 0.02)
    u = mixerlab.create_model("u_convnext_tiny")
    assert u.config.init == "trunc_normal"
    assert _std_close(u.stages[0].blocks[0].mixer.dw.weight, 0.02)
    assert _std_close(u.stages[1].downsample.conv.weight, 0.02)


@pytest.mark.parametrize("scheme", ["trunc_normal", "pycls_vit"])
@pytest.mark.parametrize("name", sorted(mixerlab.MIXERS))
def test_mixer_alone_is_initialised_as_in_a_model(name: str, scheme: str) -> None:
    """Every parameter of a mixer built alone follows the rule it follows inside a model: zero where the
    model's is zero, and the same spread (std within 30%, far below the gap between rules: PyTorch's
    default is ~5x trunc-normal .02 at this width)."""
    args = {"sr_ratio": 1} if name == "sra" else {}
    cfg = mixerlab.ModelConfig(arch="isotropic", stem=mixerlab.StemConfig("patch", 4), depths=[1], dims=[64],
                               heads=[2], head="avg", img_size=32, num_classes=0, init=scheme,
                               mixer=mixerlab.MixerConfig(name, args))
    torch.manual_seed(0)
    in_model = dict(mixerlab.build_model(cfg).mixers())["blocks.0.mixer"]
    alone = mixerlab.build_mixer(name, MixerContext(dim=64, num_heads=2, resolution=(8, 8)), init=scheme, **args)
    for (k, a), (_, b) in zip(alone.named_parameters(), in_model.named_parameters(), strict=True):
        assert bool(a.any()) == bool(b.any()), k
        if a.numel() >= 256 and b.any():
            assert abs(a.std().item() / b.std().item() - 1) < 0.3, k


def test_deformable_alone_starts_as_the_uniform_average() -> None:
    """DCNv3's offset and point-weight layers are zero-initialised alone too (not only in a model)."""
    m = mixerlab.build_mixer("dcn", MixerContext(dim=32, num_heads=2, resolution=(8, 8)))
    for layer in (m.sampling_offsets, m.attention_weights):
        assert not layer.weight.any() and not layer.bias.any()
