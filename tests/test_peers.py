"""mixerlab's rebuilds of Swin-T, ViT-S/16 and ConvNeXt-T give timm's logits once timm's weights
are copied (SPEC 6): the oracle for our window attention, relative position bias, shifted-window
masks, patch merging, ViT blocks and the ConvNeXt block.

timm's own init is nearly degenerate for such a check (LayerScale 1e-6 makes ConvNeXt blocks
almost the identity, std .02 weights make attention almost uniform and position biases almost
zero), so every timm parameter is first re-drawn at unit scale. Swin is compared only at sizes
whose stage maps need no window padding (timm lets padded keys take part, mixerlab masks them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import timm
import torch
from torch import nn

import mixerlab
from mixerlab import mlp as mlp_module
from mixerlab.zoo.peers import TIMM_PEERS

EPS32 = torch.finfo(torch.float32).eps


def fp32_tol(ref: torch.Tensor, model: nn.Module) -> float:
    """How far two float32 implementations of one network may drift apart by rounding alone.

    float32 is the point here (timm's models as users run them). The two may order the terms of a length-K
    dot product differently, which moves it by about eps * magnitude * sqrt(K) (independent roundings add
    like a random walk); the normalised residual blocks pass that relative error on to the output instead of
    amplifying it. So: eps32 * max|ref| * sqrt(K), K the widest reduction of the network (the largest fan-in
    of its convs and Linears: the MLP's hidden width). About 2e-5 for Swin-T's logits, whose float32
    rounding (against float64) is about 1.5e-6."""
    k = max(m.weight[0].numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    return EPS32 * ref.abs().max().item() * k ** 0.5
Pairs = Callable[..., tuple[nn.Module, nn.Module]]


def randomize_(model: nn.Module, seed: int) -> None:
    """Re-draw every parameter so that each part of the network visibly changes the output:
    matrices variance-preserving N(0, 1/fan_in), norm weights and LayerScale in [0.5, 1.5],
    biases, position tables and the class token N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    tables = ("relative_position_bias_table", "pos_embed", "cls_token")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not any(t in name for t in tables):
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("gamma") or (p.dim() == 1 and "norm" in name and name.endswith("weight")):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def pairs() -> Iterator[Pairs]:
    """``pairs(ml_name, **kwargs)`` -> (timm model with randomized weights, mixerlab model loaded
    from it), both in eval mode. Cached per module (building 28M-parameter models dominates the
    test time): tests must not modify them."""
    cache: dict[tuple, tuple[nn.Module, nn.Module]] = {}

    def get(ml_name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
        key = (ml_name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = build_pair(ml_name, **kwargs)
        return cache[key]

    yield get
    cache.clear()


def build_pair(ml_name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """Both sides of a pair with the same ``kwargs`` (e.g. ``img_size``) and the same weights."""
    torch.manual_seed(0)
    theirs = timm.create_model(TIMM_PEERS[ml_name], **kwargs).eval()
    randomize_(theirs, 1)
    ours = mixerlab.create_model(ml_name, **kwargs).eval()
    assert mixerlab.load_timm_weights(ours, theirs) is ours
    return theirs, ours


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("ml_name", ["swin_tiny_ml", "vit_small_ml", "convnext_tiny_ml"])
def test_same_logits_and_features_at_224(ml_name: str, pairs: Pairs) -> None:
    theirs, ours = pairs(ml_name)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        feats_t, feats_o = theirs.forward_features(x), ours.forward_features(x)
        pre_t = theirs.forward_head(feats_t, pre_logits=True)
        pre_o = ours.forward_head(feats_o, pre_logits=True)
        logits_t, logits_o = theirs.forward_head(feats_t), ours.forward_head(feats_o)
    assert ours.num_features == theirs.num_features
    assert pre_o.shape == (2, theirs.num_features)
    assert logits_o.shape == (2, 1000)
    assert logits_t.abs().max() > 1.0  # the weights are not degenerate: logits are O(1)
    assert max_diff(pre_o, pre_t) <= fp32_tol(pre_t, theirs)
    assert max_diff(logits_o, logits_t) <= fp32_tol(logits_t, theirs)


def assert_same_with_autograd(theirs: nn.Module, ours: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                              x: torch.Tensor, g: torch.Generator) -> None:
    """With autograd on, ``run`` (``ours`` or a compiled form of it) gives timm's logits, and the input gradient
    of a random cotangent (drawn from ``g``) matches timm's; both models' parameter gradients are cleared."""
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    lt, lo = theirs(xt), run(xo)
    assert max_diff(lo.detach(), lt.detach()) <= fp32_tol(lt, theirs)
    cotangent = torch.randn(lt.shape, generator=g)
    (lt * cotangent).sum().backward()
    (lo * cotangent).sum().backward()
    theirs.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    assert xt.grad.abs().max() > 0
    assert max_diff(xo.grad, xt.grad) <= fp32_tol(xt.grad, theirs)


@pytest.mark.parametrize("ml_name", ["swin_tiny_ml", "vit_small_ml", "convnext_tiny_ml"])
def test_same_function_on_the_paths_the_benchmarks_time(ml_name: str, pairs: Pairs, monkeypatch) -> None:
    """Batch 8 at 224, as benchmarks/peers.py runs them: stage 1 and 2 MLPs take the chunked CPU path
    (its inference and its training variant), and with autograd on Swin's learned bias takes the explicit
    softmax kernel. Logits without and with autograd, and the input gradient, match timm's."""
    theirs, ours = pairs(ml_name)
    calls = {"chunked_mlp": 0, "chunked_mlp_train": 0}

    def counted(op: str) -> Callable[..., object]:
        kernel = getattr(mlp_module, op)

        def call(*args: object) -> object:
            calls[op] += 1
            return kernel(*args)
        return call

    for op in calls:
        monkeypatch.setattr(mlp_module, op, counted(op))
    g = torch.Generator().manual_seed(12)
    x = torch.randn(8, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = theirs(x)
        assert max_diff(ours(x), ref) <= fp32_tol(ref, theirs)
    assert calls["chunked_mlp_train"] == 0
    assert_same_with_autograd(theirs, ours, ours, x, g)
    # ViT-S's hidden activation (8 x 197 x 1536) stays below the threshold; stage 1 and 2 of the others do not.
    assert (min(calls.values()) > 0) == (ml_name != "vit_small_ml")


@pytest.mark.parametrize("ml_name", ["swin_tiny_ml", "vit_small_ml", "convnext_tiny_ml"])
def test_same_function_under_torch_compile(ml_name: str, pairs: Pairs) -> None:
    """What torch.compile runs: dynamo's trace of the whole network (one graph, no break: ``fullgraph``)
    through AOTAutograd, inference and with autograd, matches timm's eager logits and input gradient.
    The ``aot_eager`` backend runs that traced graph with ATen kernels: the mixerlab code paths compile
    sees (at batch 2 the MLPs below the chunked kernels' threshold, whose compiled form tests/test_mlp.py
    checks; SDPA; masks as traced) are checked here in seconds; inductor's own code generation is PyTorch's
    to test (its end-to-end numbers against timm are in docs/benchmarks.md: a full inductor
    compile of Swin-T costs minutes of C++ compilation on 2 cores)."""
    theirs, ours = pairs(ml_name)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = theirs(x)
        assert max_diff(compiled(x), ref) <= fp32_tol(ref, theirs)
    try:
        assert_same_with_autograd(theirs, ours, compiled, x, g)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("img_size", [112, (112, 224)])
def test_swin_other_sizes(img_size: int | tuple[int, int], pairs: Pairs) -> None:
    """112: stage maps 28/14/7/4, so the last stage's window shrinks to 4x4 without shift.
    (112, 224): maps 28x56 ... 4x7: stage 3 shifts along the width only (7x14 map), stage 4 has
    a non-square 4x7 window. No map needs padding."""
    theirs, ours = pairs("swin_tiny_ml", img_size=img_size)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = theirs(x)
        assert max_diff(ours(x), ref) <= fp32_tol(ref, theirs)


def test_comparison_detects_a_broken_window_block(pairs: Pairs) -> None:
    """The randomized weights make the check sensitive: dropping one block's shift or
    transposing one relative-position index moves the logits far beyond the tolerance."""
    theirs, ours = pairs("swin_tiny_ml", img_size=112)
    ours = copy.deepcopy(ours)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = theirs(x)
        tol = fp32_tol(ref, theirs)
        assert max_diff(ours(x), ref) <= tol
        mixer = ours.stages[1].blocks[1].mixer
        mixer.shift = (0, 0)
        assert max_diff(ours(x), ref) > 100 * tol
        mixer.shift = (3, 3)
        assert max_diff(ours(x), ref) <= tol
        mixer = ours.stages[2].blocks[0].mixer
        mixer.relative_position_index = mixer.relative_position_index.t().contiguous()
        assert max_diff(ours(x), ref) > 100 * tol


def test_convnext_conv_mlp_and_state_dict_input(pairs: Pairs) -> None:
    """timm's conv_mlp=True ConvNeXt stores the MLP as 1x1 convs; the mapping reshapes them to
    Linear. The source is given as a plain state dict."""
    theirs = timm.create_model("convnext_tiny", conv_mlp=True).eval()
    randomize_(theirs, 11)
    ours = copy.deepcopy(pairs("convnext_tiny_ml")[1])
    mixerlab.load_timm_weights(ours, theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        ref = theirs(x)
        assert max_diff(ours(x), ref) <= fp32_tol(ref, theirs)


def test_wrong_pair_is_rejected(pairs: Pairs) -> None:
    swin_sd = pairs("swin_tiny_ml")[0].state_dict()
    convnext = pairs("convnext_tiny_ml")[1]
    with pytest.raises(ValueError, match=r"SwinTransformer.*supported pairs: .*ConvNeXt -> mixerlab convnext_tiny_ml"):
        mixerlab.load_timm_weights(convnext, swin_sd)
    # A mixerlab model that rebuilds no timm model (U-Swin: unified stem, conv head).
    with pytest.raises(ValueError, match=r"no timm rebuild .*supported pairs"):
        mixerlab.load_timm_weights(mixerlab.create_model("u_swin_micro"), swin_sd)
    with pytest.raises(ValueError, match=r"not a supported timm model"):
        mixerlab.load_timm_weights(convnext, {"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"a mixerlab model"):
        mixerlab.load_timm_weights(nn.Linear(2, 2), swin_sd)


def test_structural_mismatch_lists_keys(pairs: Pairs) -> None:
    """Same family, different structure: every offending key is named before anything loads."""
    swin_sd = pairs("swin_tiny_ml")[0].state_dict()
    ours = mixerlab.create_model("swin_tiny_ml", img_size=112, depths=[1, 1, 1, 1])
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError) as err:
        mixerlab.load_timm_weights(ours, swin_sd)
    msg = str(err.value)
    assert "missing keys [], unexpected keys (after renaming) ['stages.0.blocks.1." in msg
    assert "stages.3.blocks.0.mixer.relative_position_bias_table: timm (169, 24) vs mixerlab (49, 24)" in msg
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in before.items())
