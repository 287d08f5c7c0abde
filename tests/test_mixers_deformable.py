"""DCNv3 mixer: grid_sample aggregation vs an independent bilinear loop, the zero-offset limit (a 3x3
average), gradients, batch independence, argument checks and the zero init inside a built model.
Comparisons run in float64 at 1e-10 of the output's magnitude (:func:`assert_close64`), independent of the
machine's float32 rounding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixerlab import ConfigError, MixerConfig, ModelConfig, StemConfig, build_mixer, build_model, create_model
from mixerlab.mixers import MixerContext
from mixerlab.mixers.deformable import DeformableConv, deform_aggregate, sampling_points


def assert_close64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


def naive_aggregate(value, offsets, weights, kernel_size, dilation, scale):
    """Loop over every output position, group and point; bilinear weights written out by hand (float64)."""
    value, offsets, weights = value.double(), offsets.double(), weights.double()
    b, h, w, c = value.shape
    g, p = weights.shape[-2:]
    d = c // g
    out = torch.zeros_like(value)

    def pixel(n, yy, xx, grp):
        if 0 <= yy < h and 0 <= xx < w:
            return value[n, yy, xx, grp * d:(grp + 1) * d]
        return torch.zeros(d, dtype=value.dtype)

    for n in range(b):
        for i in range(h):
            for j in range(w):
                for grp in range(g):
                    acc = torch.zeros(d, dtype=value.dtype)
                    for k in range(p):
                        gx = (k // kernel_size - kernel_size // 2) * dilation
                        gy = (k % kernel_size - kernel_size // 2) * dilation
                        x = j + scale * (gx + offsets[n, i, j, grp, k, 0].item())
                        y = i + scale * (gy + offsets[n, i, j, grp, k, 1].item())
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        s = ((1 - fx) * (1 - fy) * pixel(n, y0, x0, grp) + fx * (1 - fy) * pixel(n, y0, x0 + 1, grp)
                             + (1 - fx) * fy * pixel(n, y0 + 1, x0, grp) + fx * fy * pixel(n, y0 + 1, x0 + 1, grp))
                        acc += weights[n, i, j, grp, k] * s
                    out[n, i, j, grp * d:(grp + 1) * d] = acc
    return out


@pytest.mark.parametrize("kernel_size,dilation,scale", [(3, 1, 1.0), (3, 2, 0.5), (5, 1, 1.5)])
def test_grid_sample_matches_naive_bilinear(kernel_size, dilation, scale):
    torch.manual_seed(0)
    b, h, w, g, d = 2, 5, 6, 2, 3
    p = kernel_size ** 2
    value = torch.randn(b, h, w, g * d, dtype=torch.float64)
    offsets = torch.randn(b, h, w, g, p, 2, dtype=torch.float64) * 2.0  # reaches well outside the 5x6 map
    weights = torch.randn(b, h, w, g, p, dtype=torch.float64).softmax(-1)
    got = deform_aggregate(value, offsets, weights, sampling_points(kernel_size, dilation), scale)
    assert_close64(got, naive_aggregate(value, offsets, weights, kernel_size, dilation, scale))


def test_gradients_match_finite_differences():
    torch.manual_seed(1)
    b, h, w, g, d, p = 1, 3, 4, 2, 2, 9
    value = torch.randn(b, h, w, g * d, dtype=torch.float64, requires_grad=True)
    # Keep sampling points away from integer coordinates, where bilinear interpolation has kinks.
    offsets = (torch.rand(b, h, w, g, p, 2, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    logits = torch.randn(b, h, w, g, p, dtype=torch.float64, requires_grad=True)
    points = sampling_points(3).double()
    assert torch.autograd.gradcheck(
        lambda v, o, m: deform_aggregate(v, o, m.softmax(-1), points, 1.0), (value, offsets, logits), fast_mode=True)


def _mixer(dim=8, groups=2, **kw):
    m = build_mixer("dcn", MixerContext(dim=dim, num_heads=groups, resolution=(7, 9)), groups=groups, **kw)
    m.init_weights()
    return m.double()


@pytest.mark.parametrize("kw,dil", [({}, 1), ({"offset_scale": 2.0}, 2), ({"dilation": 2}, 2)])
def test_zero_offsets_uniform_weights_is_3x3_average(kw, dil):
    torch.manual_seed(2)
    m = _mixer(**kw)
    x = torch.randn(2, 7, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        v = m.value_proj(x).permute(0, 3, 1, 2)
        # 3x3 mean over a zero-padded map (always divided by 9), with the grid's spacing.
        avg = F.conv2d(v, torch.full((8, 1, 3, 3), 1 / 9, dtype=torch.float64), padding=dil, dilation=dil, groups=8)
        want = m.output_proj(avg.permute(0, 2, 3, 1))
        if dil == 1:
            assert_close64(avg, F.avg_pool2d(v, 3, 1, 1, count_include_pad=True))
        assert_close64(m(x), want)


def test_point_order_matches_stm_evaluation():
    """Point k sits at (dx, dy) = (k // 3 - 1, k % 3 - 1): a one-hot weight on k shifts the value map."""
    torch.manual_seed(3)
    m = _mixer()
    x = torch.randn(1, 7, 9, 8, dtype=torch.float64)
    v = m.value_proj(x)
    for k in (1, 3, 5):
        dx, dy = k // 3 - 1, k % 3 - 1
        with torch.no_grad():
            m.attention_weights.bias.zero_()
            m.attention_weights.bias.view(2, 9)[:, k] = 100.0  # softmax -> one-hot on k
        shifted = torch.zeros_like(v)
        rows, cols = slice(max(0, -dy), 7 - max(0, dy)), slice(max(0, -dx), 9 - max(0, dx))
        src_r, src_c = slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx)
        shifted[:, rows, cols] = v[:, src_r, src_c]
        assert_close64(m(x), m.output_proj(shifted))


def _randomise(m):
    torch.manual_seed(4)
    with torch.no_grad():
        m.sampling_offsets.weight.normal_(0, 0.5)
        m.sampling_offsets.bias.normal_(0, 2.0)
        m.attention_weights.weight.normal_(0, 0.5)


def test_no_batch_cross_talk_and_backward():
    m = _mixer(dim=8, groups=4)
    _randomise(m)
    x = torch.randn(3, 7, 9, 8, dtype=torch.float64, requires_grad=True)
    y = m(x)
    x2 = x.detach().clone()
    x2[1:] = torch.randn(2, 7, 9, 8, dtype=torch.float64) * 5
    torch.testing.assert_close(m(x2)[0], y[0], rtol=0, atol=0)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # Only sample 0's output depends on sample 0's input.
    x.grad = None
    m(x)[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1:].abs().sum() == 0
    for name, prm in m.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0, name


def test_mixer_equals_its_parts():
    """The module wires query path, projections and the aggregation as documented."""
    m = _mixer(dim=8, groups=2)
    _randomise(m)
    x = torch.randn(2, 7, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        q = F.gelu(F.layer_norm(m.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), (8,),
                                m.dw_norm.weight, m.dw_norm.bias, 1e-5))
        off = m.sampling_offsets(q).view(2, 7, 9, 2, 9, 2)
        wts = m.attention_weights(q).view(2, 7, 9, 2, 9).softmax(-1)
        want = m.output_proj(naive_aggregate(m.value_proj(x), off, wts, 3, 1, 1.0))
        assert_close64(m(x), want)


def _tiny_config(mixer=None, **mixer_args):
    """Two stages (widths 16 / 32, heads 2 / 4); ``mixer`` a per-stage list, else one dcn with ``mixer_args``."""
    return ModelConfig(stem=StemConfig("unified", patch_size=4), mixer=mixer or MixerConfig("dcn", mixer_args),
                       depths=[1, 1], dims=[16, 32], heads=[2, 4], img_size=32, num_classes=5,
                       layer_scale=1e-6, stage_norm=True)


def test_built_model_starts_from_the_regular_grid():
    torch.manual_seed(5)
    model = build_model(_tiny_config([MixerConfig("dcn", {"groups": g}) for g in (4, 8)]))
    mixers = [m for _, m in model.mixers()]
    assert [m.groups for m in mixers] == [4, 8]
    for m in mixers:
        for layer in (m.sampling_offsets, m.attention_weights):
            assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
        assert m.value_proj.weight.std() > 0.01  # the global trunc-normal init still ran
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    # STM-Evaluation's effective init: the global init survives on offsets and weights.
    model = build_model(_tiny_config(zero_init=False))
    assert all(m.sampling_offsets.weight.abs().sum() > 0 for _, m in model.mixers())
    assert [m.groups for _, m in model.mixers()] == [2, 4]  # groups default to the heads


def test_parameter_count_matches_stm_evaluation_formula():
    d, g = 64, 4
    m = _mixer(dim=d, groups=g)
    # STM-Eval's MSDeformAttnGrid_softmax: dwconv3x3 (+bias), LN, offsets, weights, value, output (all bias).
    want = (9 * d + d) + 2 * d + (d + 1) * g * 18 + (d + 1) * g * 9 + 2 * (d * d + d)
    assert sum(p.numel() for p in m.parameters()) == want


def _stm_eval_dcn_params(depths, dims, groups, classes=1000):
    """Parameter count read off STM-Eval's MetaArch + DCNv3Block + MSDeformAttnGrid_softmax."""
    h0 = dims[0] // 2
    n = 3 * h0 * 9 + h0 + 2 * h0 + h0 * dims[0] * 9 + dims[0] + 2 * dims[0]  # stem
    n += sum(dims[i] * dims[i + 1] * 9 + 2 * dims[i + 1] for i in range(3))  # conv s2 (no bias) + LN
    for d, g, k in zip(dims, groups, depths, strict=True):
        mixer = (9 * d + d) + 2 * d + (d + 1) * g * 27 + 2 * (d * d + d)
        block = 2 * d + mixer + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d) + 2 * d  # norms, MLP, gammas
        n += k * block + 2 * d  # + stage norm
    f = dims[-1] * 3 // 2
    return n + dims[-1] * f + 2 * f + f * classes + classes  # conv head, BN, classifier


def test_u_dcn_tiny_matches_stm_evaluation_parameter_count():
    model = create_model("u_dcn_tiny")
    assert sum(p.numel() for p in model.parameters()) == _stm_eval_dcn_params(
        [4, 4, 18, 4], [64, 128, 256, 512], [4, 8, 16, 32]) == 29_933_272
    assert [m.groups for _, m in model.mixers()] == [4] * 4 + [8] * 4 + [16] * 18 + [32] * 4


def test_created_model_has_zero_offsets():
    model = create_model("u_dcn_micro", img_size=64, num_classes=3)
    for _, m in model.mixers():
        assert m.sampling_offsets.weight.abs().sum() == 0 and m.attention_weights.weight.abs().sum() == 0
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("args,name", [
    ({"groups": 3}, "groups"), ({"groups": 0}, "groups"), ({"groups": [2, 4]}, "groups"), ({"groups": True}, "groups"),
    ({"offset_scale": 0.0}, "offset_scale"), ({"offset_scale": -1}, "offset_scale"),
    ({"kernel_size": 4}, "kernel_size"), ({"dw_kernel_size": 2}, "dw_kernel_size"),
    ({"dilation": 0}, "dilation"), ({"zero_init": 1}, "zero_init"), ({"kernel": 3}, "kernel"),
])
def test_bad_arguments_are_rejected(args, name):
    with pytest.raises(ConfigError, match=name):
        DeformableConv.check_args(args, dim=8, num_heads=2, resolution=(7, 7))


def test_groups_list_is_refused_pointing_to_per_stage_mixers():
    with pytest.raises(ConfigError, match=r"mixer\.args\.groups=\[4, 8\] is invalid: one int; per-stage values go "
                                          r"in per-stage mixer configs: mixer=\[\.\.\.\]"):
        build_model(_tiny_config(groups=[4, 8]))


def test_bad_per_stage_groups_are_rejected_at_build():
    with pytest.raises(ConfigError, match="groups=3 is invalid: a positive divisor of the width 32 of stage 1"):
        build_model(_tiny_config([MixerConfig("dcn", {"groups": 4}), MixerConfig("dcn", {"groups": 3})]))
