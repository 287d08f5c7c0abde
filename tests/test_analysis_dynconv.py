"""Attention as dynamic depth-wise convolution and back (SPEC 8.5): exact reconstructions, kernel layouts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from mixerlab.analysis.dynconv import (
    EXTRACTORS,
    DynConvRecord,
    as_attention,
    as_dynamic_conv,
    attention_specs,
    conv_specs,
    depthwise_attention_map,
    dynconv,
    relative_error,
)
from mixerlab.cli import main
from mixerlab.errors import ConfigError
from mixerlab.mixers import MIXERS, MixerContext, build_mixer
from mixerlab.mixers.attend import ATTN_ACTS
from tiny_runs import needs_fmnist

TOL = 1e-5  # relative, float32


def grids(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def mixer(name: str, args: dict[str, Any], resolution: tuple[int, int] = (14, 14), dim: int = 32, heads: int = 4,
          index: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    ctx = MixerContext(dim=dim, num_heads=heads, resolution=resolution, index=index)
    return build_mixer(name, ctx, **args).to(dtype).eval()


def test_the_default_specs_cover_every_attention_mixer():
    # a new mixer exposing aggregation_weights must get an extractor, or this fails
    attention = {n for n, cls in MIXERS.items() if hasattr(cls, "aggregation_weights")}
    assert attention == {"attention", "window", "halo", "sra", "dwattn"}
    assert all(issubclass(MIXERS[n], tuple(EXTRACTORS)) for n in attention)
    assert attention_specs() == [("attention", {}), ("window", {}), ("halo", {}), ("sra", {}),
                                 ("dwattn", {"window_size": 7}), ("dwattn", {"window_size": None})]
    assert conv_specs() == [("dwconv", {}), ("dwnet", {})]


@pytest.mark.parametrize("act", ATTN_ACTS)
@pytest.mark.parametrize(("name", "args"), attention_specs(), ids=lambda a: str(a))
def test_attention_is_reproduced_by_its_dynamic_depthwise_conv(name, args, act):
    m = mixer(name, {**args, "attn_act": act})
    x = grids((2, 14, 14, 32))
    with torch.no_grad():
        y = m(x)
        dc = as_dynamic_conv(m, x)
        heads = 32 if name == "dwattn" else 4
        keys = 49 if name == "sra" else 196  # sra's default sr_ratio 2: a 7 x 7 key grid
        assert tuple(dc.kernels.shape) == (2, 196, keys, heads)
        assert relative_error(dc.output(), y) <= TOL  # the explicit (idynconv) convolution
        assert relative_error(m.proj(dc.aggregate(dc.value)), y) <= TOL  # the dense form
        assert torch.equal(dc.kernels, m.aggregation_weights(x).permute(0, 2, 3, 1))


# Masks and padding: shifted windows (region masks), maps windows / blocks / reductions do not divide, an
# 'input' position table, depth-wise q/k projections.
EDGE_CASES = [
    ("window", {"window_size": 7}, (14, 14), 1),
    ("window", {"window_size": 4, "window_fit": "pad"}, (10, 13), 1),
    ("halo", {"block_size": 4, "halo_size": 2}, (10, 13), 0),
    ("sra", {"sr_ratio": 3, "pos_embed": "input"}, (14, 13), 0),
    ("sra", {"sr_ratio": 1}, (9, 9), 0),
    ("dwattn", {"window_size": 4, "dw_proj": True, "window_fit": "pad"}, (10, 9), 0),
]


@pytest.mark.parametrize("act", ["softmax", "relu_layernorm"])
@pytest.mark.parametrize(("name", "args", "res", "index"), EDGE_CASES, ids=lambda a: str(a))
def test_masked_and_padded_attention_is_reproduced(name, args, res, index, act):
    m = mixer(name, {**args, "attn_act": act}, resolution=res, index=index)
    x = grids((2, *res, 32), seed=1)
    with torch.no_grad():
        assert relative_error(as_dynamic_conv(m, x).output(), m(x)) <= TOL


def test_kernel_layouts_supports_and_reduced_keys():
    x = grids((1, 14, 14, 32), torch.float64)
    with torch.no_grad():
        win = as_dynamic_conv(mixer("window", {}, dtype=torch.float64), x)
        glob = as_dynamic_conv(mixer("attention", {}, dtype=torch.float64), x)
        assert (win.radius(), glob.radius()) == (6, 13)  # inside a 7 x 7 window; across the 14 x 14 map
        taps = glob.local_kernels()  # (1, 4, 27*27, 14, 14)
        assert taps.shape == (1, 4, 729, 14, 14)
        assert (taps.view(1, 4, 27, 27, 14, 14)[..., :13, :, 0, 0] == 0).all()  # query (0, 0): no key above it
        sra = as_dynamic_conv(mixer("sra", {"sr_ratio": 3}, dtype=torch.float64), x)
        assert sra.key_stride == 3 and sra.value.shape == (1, 5, 5, 32)
        km = sra.map_kernels()  # (1, 196, 196, 4): each key's weight spread over its patch (4 x 4 = 16 ... 2 x 2)
        assert torch.allclose(km.sum(2), sra.kernels.sum(2))
        assert torch.allclose(km[0, 0, 14 * 12 + 12], sra.kernels[0, 0, 24] / 4)  # the bottom-right 2 x 2 patch
        v = grids((3, 5, 5, 32), torch.float64, seed=2)
        assert relative_error(sra.conv(v), sra.aggregate(v)) <= 1e-12


@pytest.mark.parametrize(("name", "args"), [("dwconv", {}), ("dwconv", {"proj": False, "kernel_size": 3}),
                                            ("dwnet", {}), ("dwnet", {"kernel_size": 5})])
def test_depthwise_conv_is_static_attention(name, args):
    m = mixer(name, args)
    x1, x2 = grids((2, 14, 14, 32)), grids((2, 14, 14, 32), seed=3)
    with torch.no_grad():
        sa = as_attention(m, x1)
        assert sa.attention.shape == (32, 196, 196)
        assert relative_error(sa.output(), m(x1)) <= TOL
        assert torch.equal(as_attention(m, x2).attention, sa.attention)  # static: the same map at any input


def test_attention_map_of_a_depthwise_conv_is_its_kernel_with_zero_padding():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=2, dilation=2, groups=3).double()
    a = depthwise_attention_map(conv, (8, 9))
    w = conv.weight[:, 0].detach()
    i = 4 * 9 + 4  # interior query (4, 4): taps at offsets -2, 0, 2 along each axis
    for (ki, kj) in [(0, 0), (1, 2), (2, 1)]:
        assert torch.equal(a[:, i, (4 + 2 * ki - 2) * 9 + 4 + 2 * kj - 2], w[:, ki, kj])
    assert (a[0].ne(0).sum(1).view(8, 9)[0, 0], a[0].ne(0).sum(1).view(8, 9)[4, 4]) == (4, 9)  # corner: 2 x 2 taps
    x = grids((2, 8, 9, 3), torch.float64)
    sa = as_attention(conv, x)
    ref = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=2, dilation=2, groups=3).permute(0, 2, 3, 1)
    assert relative_error(sa.output(), ref) <= 1e-12


def test_wrong_mixers_and_inputs_are_refused():
    x = grids((1, 14, 14, 32))
    with pytest.raises(ConfigError, match="as_attention"):
        as_dynamic_conv(mixer("dwconv", {}), x)
    with pytest.raises(ConfigError, match="as_dynamic_conv"):
        as_attention(mixer("window", {}), x)
    with pytest.raises(ConfigError, match="as_attention"):
        as_attention(mixer("dwnet", {"conv": "dynamic"}), x)
    with pytest.raises(ConfigError, match=r"x of shape \(1, 14, 14, 16\)"):
        as_dynamic_conv(mixer("attention", {}), grids((1, 14, 14, 16)))
    with pytest.raises(ConfigError, match="stride 1"):
        depthwise_attention_map(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (8, 8))
    dc = as_dynamic_conv(mixer("window", {}), x)
    with pytest.raises(ConfigError, match=r"v of shape \(1, 7, 7, 32\)"):
        dc.conv(grids((1, 7, 7, 32)))


def test_record_rows_and_figure():
    rec = dynconv(["window", ("dwattn", {"window_size": 7}), "dwconv"], acts=("softmax", "relu"), inputs="random")
    assert isinstance(rec, DynConvRecord)
    assert [(r.mixer, r.attn_act, r.form) for r in rec.rows] == [
        ("window", "softmax", "dynamic conv"), ("window", "relu", "dynamic conv"),
        ("dwattn(window_size=7)", "softmax", "dynamic conv"), ("dwattn(window_size=7)", "relu", "dynamic conv"),
        ("dwconv", None, "static attention")]
    assert all(r.rel_error <= TOL for r in rec.rows)
    assert rec.rows[0].kernels == [2, 196, 196, 4] and rec.rows[0].kernel_size == 13
    assert isinstance(rec.figures["kernels"], Figure) and len(rec.figures["kernels"].axes) == 3
    # the figure's data, in the record: 3 query kernels on the 14 x 14 map per panel; a softmax kernel sums to 1
    panels = rec.to_dict()["panels"]
    assert [p["label"] for p in panels] == ["window\nsoftmax", "dwattn(window_size=7)\nsoftmax", "dwconv\nstatic"]
    assert all(torch.tensor(p["maps"]).shape == (3, 14, 14) for p in panels)
    assert torch.allclose(torch.tensor(panels[0]["maps"]).sum((1, 2)), torch.ones(3), atol=1e-5)
    with pytest.raises(ConfigError, match=r"acts\[0\]"):
        dynconv(acts=("gelu",))


@needs_fmnist
def test_cli_writes_the_figure_and_every_reconstruction(tmp_path, capsys):
    assert main(["analyze", "dynconv", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "dwattn(window_size=None)" in table and "static attention" in table
    rec = json.loads((tmp_path / "dynconv.json").read_text())
    assert rec["inputs"]["kind"] == "fashion-mnist stem features"
    assert len(rec["rows"]) == len(attention_specs()) * len(ATTN_ACTS) + len(conv_specs())
    assert all(r["rel_error"] <= TOL for r in rec["rows"])
    assert (tmp_path / "dynconv_kernels.png").stat().st_size > 10_000


@needs_fmnist
def test_model_stage_mixers_are_reproduced(capsys):
    rec = dynconv(model="u_swin_micro", img_size=32, in_chans=1)
    assert [r.mixer for r in rec.rows] == [f"stages.{i}.blocks.0.mixer (window)" for i in range(4)]
    assert all(r.form == "dynamic conv" and r.attn_act == "softmax" and r.rel_error <= TOL for r in rec.rows)
    assert [r.kernels for r in rec.rows] == [[2, 64, 64, 1], [2, 16, 16, 2], [2, 4, 4, 4], [2, 1, 1, 8]]
    assert rec.skipped == [] and rec.source["model"] == "u_swin_micro"
    assert len(rec.figures["kernels"].axes) == 4
    assert main(["analyze", "dynconv", "--model", "u_convnext_micro", "--img-size", "32", "--in-chans", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped: DWConv is not an attention mixer") == 4
