"""Convolution-family mixers (static / dynamic / inhomogeneous dynamic depth-wise convs, DWNet's block,
DMFormer's DMA, pooling, identity): fast paths against independent references, limits in which a
dynamic conv must equal a static one, translation equivariance, batch independence, argument checks
and the published parameter count of dynamic DWNet-T. Comparisons run in float64 at 1e-10 of the output's
magnitude (:func:`assert_close64`): sums of a few hundred products round to ~1e-14 there, so only a real
difference fails, on any machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixerlab
from mixerlab import ConfigError
from mixerlab.mixers import MixerContext, build_mixer, dynamic
from mixerlab.mixers.dynamic import (
    DynamicDWConv2d,
    IDynamicDWConv2d,
    dynamic_depthwise_conv,
    inhomogeneous_depthwise_conv,
)

F64 = torch.float64


def assert_close64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype == F64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


def randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_dynamic_conv_with_fixed_kernel_is_a_static_depthwise_conv():
    torch.manual_seed(0)
    c, k = 8, 5
    dyn = DynamicDWConv2d(c, kernel_size=k, reduction=4).double().eval()
    kernel, bias = torch.randn(c, 1, k, k, dtype=F64), torch.randn(c, dtype=F64)
    with torch.no_grad():
        dyn.conv2.weight.zero_()
        dyn.conv2.bias.copy_(kernel.flatten())
        dyn.bias.copy_(bias)
    x = torch.randn(3, c, 9, 11, dtype=F64)
    with torch.no_grad():
        assert_close64(dyn(x), F.conv2d(x, kernel, bias, padding=k // 2, groups=c))
        # the mixer on a channels-last grid (proj=False leaves only the dynamic conv)
        mixer = build_mixer("dynconv", MixerContext(dim=c), kernel_size=k, proj=False).double().eval()
        mixer.dw.load_state_dict(dyn.state_dict())
        want = F.conv2d(x, kernel, bias, padding=k // 2, groups=c).permute(0, 2, 3, 1)
        assert_close64(mixer(x.permute(0, 2, 3, 1)), want)


def test_idynamic_conv_with_position_constant_kernels_is_a_grouped_depthwise_conv():
    torch.manual_seed(0)
    c, g, k = 12, 3, 3
    idyn = IDynamicDWConv2d(c, kernel_size=k, groups=g).double().eval()
    group_kernels = torch.randn(g, k, k, dtype=F64)
    with torch.no_grad():
        idyn.conv2.weight.zero_()
        idyn.conv2.bias.copy_(group_kernels.flatten())
        x = torch.randn(2, c, 7, 6, dtype=F64)
        per_channel = group_kernels.repeat_interleave(c // g, dim=0).unsqueeze(1)  # channel c uses group c // (C/G)
        assert_close64(idyn(x), F.conv2d(x, per_channel, padding=k // 2, groups=c))


def test_grouped_conv_fast_path_matches_per_sample_loop():
    torch.manual_seed(0)
    b, c, k = 3, 4, 5
    x = torch.randn(b, c, 8, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(b, c, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    got = dynamic_depthwise_conv(x, w, bias)
    want = torch.cat([F.conv2d(x[i:i + 1], w[i].unsqueeze(1), bias, padding=k // 2, groups=c) for i in range(b)])
    assert_close64(got, want)
    probe = torch.randn_like(want)
    g_got = torch.autograd.grad((got * probe).sum(), (x, w, bias))
    g_want = torch.autograd.grad((want * probe).sum(), (x, w, bias))
    for a, e in zip(g_got, g_want, strict=True):
        assert_close64(a, e)


def test_inhomogeneous_shifted_taps_match_explicit_loop():
    torch.manual_seed(0)
    b, c, g, k, h, w = 2, 6, 2, 3, 5, 4
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    kern = torch.randn(b, g, k * k, h, w, dtype=torch.float64)
    want = torch.zeros_like(x)
    for n in range(b):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    for t in range(k * k):
                        ii, jj = i + t // k - k // 2, j + t % k - k // 2
                        if 0 <= ii < h and 0 <= jj < w:
                            want[n, ch, i, j] += kern[n, ch // (c // g), t, i, j] * x[n, ch, ii, jj]
    assert_close64(inhomogeneous_depthwise_conv(x, kern), want)


@pytest.mark.parametrize("c,g,h,w,k", [
    (6, 2, 5, 4, 3),  # short rows, 3 channels a group: the kernel expanded over them
    (16, 2, 5, 4, 3),  # 8 channels a group: the kernel broadcast
    (8, 2, 2, 3, 7),  # a kernel larger than the map: only the reachable taps
    (6, 2, 5, 13, 3),  # rows wider than _SHORT_ROWS: the row-major loop without autograd too
])
def test_idynamic_inference_path_matches_the_autograd_path(c, g, h, w, k):
    """Without autograd on short rows IDynamicDWConv2d generates its kernel taps-first and runs the
    channels-last loop, conv2's bias as a static depth-wise conv; with autograd, the row-major function."""
    torch.manual_seed(0)
    m = IDynamicDWConv2d(c, kernel_size=k, groups=g).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    with torch.no_grad():
        fast = m(x)
    assert_close64(fast, m(x.requires_grad_()).detach())


@pytest.mark.parametrize("b,kb,k,h,w,chunk", [
    (3, 3, 3, 5, 4, 1 << 18),  # the whole batch in one chunk
    (3, 3, 3, 5, 4, 40),  # one sample per chunk
    (2, 1, 3, 4, 5, 1 << 18),  # a batch-1 kernel broadcast over the batch
    (2, 2, 7, 2, 3, 1 << 18),  # a kernel larger than the map: only the reachable 3 x 5 taps are applied
])
def test_inhomogeneous_conv_hand_written_backward_passes_gradcheck(monkeypatch, b, kb, k, h, w, chunk):
    monkeypatch.setattr(dynamic, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    x = torch.randn(b, 4, h, w, dtype=torch.float64, requires_grad=True)
    kern = torch.randn(kb, 2, k * k, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(inhomogeneous_depthwise_conv, (x, kern))


def test_dwnet_block_with_fixed_dynamic_kernel_equals_static_dwnet_block():
    """conv='dynamic' keeps every other DWNet layer and its name; with a constant kernel it is the static block."""
    torch.manual_seed(0)
    ctx = MixerContext(dim=8, num_heads=2)
    static = build_mixer("dwnet", ctx, kernel_size=3).double().eval()
    dynamic = build_mixer("dwnet", ctx, kernel_size=3, conv="dynamic").double().eval()
    randomize_bn(static)
    assert sorted(static.state_dict()) == sorted(
        ["conv0.weight", "conv.weight", "conv.bias", "conv2.weight"]
        + [f"{bn}.{p}" for bn in ("bn0", "bn", "bn2")
           for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")])
    shared = {n: t for n, t in static.state_dict().items() if not n.startswith("conv.")}
    dynamic.load_state_dict(shared, strict=False)
    with torch.no_grad():
        dynamic.conv.conv2.weight.zero_()
        dynamic.conv.conv2.bias.copy_(static.conv.weight.flatten())
        dynamic.conv.bias.copy_(static.conv.bias)
    x = torch.randn(2, 6, 5, 8, dtype=F64)
    with torch.no_grad():
        assert_close64(dynamic(x), static(x))


def test_pooling_is_mean_over_real_neighbours_minus_identity():
    torch.manual_seed(0)
    c = 5
    x = torch.randn(2, 6, 7, c, dtype=F64)
    for p in (3, 5):
        mixer = build_mixer("pooling", MixerContext(dim=c), pool_size=p)
        xc = x.permute(0, 3, 1, 2)
        ones = torch.ones(c, 1, p, p, dtype=F64)
        sums = F.conv2d(xc, ones, padding=p // 2, groups=c)
        counts = F.conv2d(torch.ones_like(xc[:, :1]), ones[:1], padding=p // 2)
        assert_close64(mixer(x), (sums / counts).permute(0, 2, 3, 1) - x)
    assert torch.equal(build_mixer("identity", MixerContext(dim=c))(x), x)
    assert not list(build_mixer("identity", MixerContext(dim=c)).parameters())


@pytest.mark.parametrize("gate_bias,gate", [(40.0, 1.0), (0.0, 0.5)])
def test_dma_with_constant_gate_is_scaled_conv1x1_of_summed_branches(gate_bias, gate):
    torch.manual_seed(0)
    c, ks, ds = 8, (3, 5, 3), (1, 2, 3)
    dma = build_mixer("dma", MixerContext(dim=c, resolution=(9, 10)), kernel_sizes=ks, dilations=ds,
                      reduction=2).double()
    with torch.no_grad():
        dma.fc2.weight.zero_()
        dma.fc2.bias.fill_(gate_bias)  # sigmoid(40) is 1.0 in float64 (1 - 4e-18 rounds up), sigmoid(0) = 0.5
        x = torch.randn(2, 9, 10, c, dtype=F64)
        xc = x.permute(0, 3, 1, 2)
        fused = sum(F.conv2d(xc, br.weight, br.bias, padding=d * (k // 2), dilation=d, groups=c)
                    for br, k, d in zip(dma.branches, ks, ds, strict=True))
        want = gate * F.conv2d(fused, dma.proj.weight, dma.proj.bias)
        assert_close64(dma(x), want.permute(0, 2, 3, 1))


MIXER_CASES = [
    ("dwconv", {"kernel_size": 5}),
    ("dynconv", {"kernel_size": 5}),
    ("dynconv", {"kernel_size": 3, "proj": False}),
    ("idynconv", {"kernel_size": 5}),
    ("idynconv", {"kernel_size": 3, "groups": 4, "proj": False}),
    ("dwnet", {"kernel_size": 5}),
    ("dwnet", {"kernel_size": 5, "conv": "dynamic"}),
    ("dwnet", {"kernel_size": 5, "conv": "idynamic", "groups": 2}),
    ("dma", {}),
    ("pooling", {}),
    ("identity", {}),
]


def _built(name, args, h=24, w=28):
    """The mixer in float64 and eval mode, every weight matrix re-drawn N(0, 1/fan_in) so that each layer
    visibly passes its input on (the init's std .02 would leave some mixers' outputs nearly constant)."""
    torch.manual_seed(0)
    mixer = build_mixer(name, MixerContext(dim=8, num_heads=2, resolution=(h, w)), **args).double()
    with torch.no_grad():
        for p in mixer.parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    randomize_bn(mixer)
    return mixer.eval()


@pytest.mark.parametrize("name,args", MIXER_CASES)
def test_translation_equivariance_away_from_borders(name, args):
    """Shift a zero-bordered input circularly; away from the borders the output shifts with it.
    (The dynamic kernels depend on the global mean, which a shift of zero-bordered content leaves
    unchanged, or on the position's own features.)"""
    mixer = _built(name, args)
    x = torch.zeros(2, 24, 28, 8, dtype=F64)
    x[:, 8:16, 8:20] = torch.randn(2, 8, 12, 8, dtype=F64)
    sh, sw = 3, -2
    with torch.no_grad():
        y = mixer(x)
        y_shifted = mixer(torch.roll(x, (sh, sw), dims=(1, 2)))
    m = 7  # largest reach of the cases (DMA: 7x7 dilation 2 reaches 6) plus one
    assert_close64(y_shifted[:, m + sh:24 - m, m:28 - m + sw],
                   torch.roll(y, (sh, sw), dims=(1, 2))[:, m + sh:24 - m, m:28 - m + sw])


@pytest.mark.parametrize("name,args", MIXER_CASES)
def test_samples_of_a_batch_do_not_interact(name, args):
    """Eval mode: in training mode BatchNorm (the DWNet block and the kernel generators) normalises
    with statistics of the whole batch, which couples samples by design; at inference it must not."""
    mixer = _built(name, args, 10, 9)
    x = torch.randn(3, 10, 9, 8, dtype=F64)
    x2 = x.clone()
    x2[0] += torch.randn(10, 9, 8, dtype=F64)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y[1:], y2[1:], rtol=0, atol=0)
    if name != "identity":
        assert not torch.allclose(y[0], y2[0])
    else:
        assert torch.equal(y2[0], x2[0])


@pytest.mark.parametrize("name,args,field", [
    ("dynconv", {"kernel_size": 4}, "kernel_size"),
    ("idynconv", {"kernel_size": 6}, "kernel_size"),
    ("dwnet", {"kernel_size": 4, "conv": "dynamic"}, "kernel_size"),
    ("dma", {"kernel_sizes": (3, 4), "dilations": (1, 1)}, "kernel_sizes[1]"),
    ("pooling", {"pool_size": 2}, "pool_size"),
    ("dma", {"kernel_sizes": (3, 5), "dilations": (1,)}, "dilations"),
    ("idynconv", {"groups": 5}, "groups"),
    ("dwnet", {"conv": "idynamic", "groups": 7}, "groups"),
    ("dwnet", {"conv": "static", "groups": 4}, "groups"),
    ("dwnet", {"conv": "deformable"}, "conv"),
    ("dynconv", {"reduction": 64}, "reduction"),
    ("dynconv", {"window_size": 7}, "window_size"),
    ("identity", {"pool_size": 3}, "pool_size"),
    ("pooling", {"kernel_size": 3}, "kernel_size"),
])
def test_bad_arguments_are_rejected_naming_the_argument(name, args, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        build_mixer(name, MixerContext(dim=32, num_heads=4, resolution=(7, 7)), **args)


def test_dma_dilations_fit_the_map():
    """A dilated branch whose outer taps would read only padding is lowered to the largest dilation that
    still reaches real pixels; the published default is unchanged on the 7x7 last stage at 224 px."""
    def dilations(res, **args):
        return [b.dilation[0] for b in build_mixer("dma", MixerContext(dim=32, resolution=res), **args).branches]

    assert dilations((7, 7)) == [1, 2, 2]  # stage 4 of a 224 model: reach 13 on a 13-wide padded map
    assert dilations((6, 6)) == [1, 2, 1]  # 7x7 at dilation 2 would reach 13 > 11
    assert dilations((4, 4)) == [1, 1, 1]
    assert dilations((9, 9), kernel_sizes=(3, 7), dilations=(1, 3)) == [1, 2]  # reach 19 > 17: 3 -> 2
    fitted = mixerlab.mixers.dma.DMA.fit({"dilations": [1, 2, 1]}, resolution=(6, 6))
    assert mixerlab.mixers.dma.DMA.fit(fitted, resolution=(6, 6)) == fitted  # idempotent


def test_idynconv_default_groups_follow_dwnet_release():
    """DWNet passes the heads as channels per group: G = dim / heads (32 in every DWNet stage)."""
    mixer = build_mixer("idynconv", MixerContext(dim=96, num_heads=3))
    assert mixer.dw.conv2.out_channels == 32 * 7 * 7


def test_dynamic_dwnet_tiny_parameter_count_matches_published():
    model = mixerlab.create_model("dwnet_tiny", conv="dynamic")
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 51e6 - 1) < 0.01, params  # Han et al., 2022: dynamic DWNet-T 51M
