"""Every registered model: builds small, trains a step, follows timm's contract, keeps samples apart."""

from __future__ import annotations

import pytest
import timm
import torch

import mixerlab

ALL = mixerlab.list_models()


def small(name: str, **kw: object) -> mixerlab.MixerNet:
    """A registered model at a small input with only img_size / in_chans / num_classes: 32x32 (hierarchical)
    or 32x32 with 16x16 patches (ViT); what must adapt to the small maps adapts itself."""
    torch.manual_seed(0)
    return mixerlab.create_model(name, img_size=32, in_chans=1, num_classes=10, **kw)


def test_registry_is_complete_and_in_timm() -> None:
    expected = {f"vit_{s}_{g}" for s in "pc" for g in ("1gf", "4gf", "18gf", "36gf")}
    expected |= {f"u_{m}_{s}" for m in ("swin", "convnext") for s in ("micro", "tiny", "small", "base")}
    expected |= {"dwnet_tiny", "dwnet_base", "swin_tiny_ml", "vit_small_ml", "convnext_tiny_ml"}
    assert expected <= set(ALL)
    assert set(mixerlab.list_models("vit_*")) == {n for n in ALL if n.startswith("vit_")}
    assert set(ALL) <= set(timm.list_models())
    m = timm.create_model("u_swin_micro", img_size=32, in_chans=1, num_classes=10, window_size=4)
    assert isinstance(m, mixerlab.MixerNet) and m.config.mixer.args["window_size"] == 4


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_contract_independence(name: str) -> None:
    model = small(name)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter receives a gradient"
    # timm's contract
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, feats, atol=1e-6)
        assert len(inter) == len(model.feature_info)
        for f, info in zip(inter, model.feature_info, strict=True):
            assert f.shape[1] == info["num_chs"]
            assert f.shape[-1] == -(-32 // info["reduction"])
        only = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(only) == 1 and torch.allclose(only[0], inter[-1], atol=1e-6)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    assert model.pretrained_cfg["classifier"] and model.get_submodule(model.pretrained_cfg["first_conv"])
    # Samples never interact: perturbing one leaves the others bit-identical (eval mode, since
    # BatchNorm in training mode shares batch statistics by design). Pre-logits, since pycls's
    # init zeroes the classifier.
    x3 = torch.randn(3, 1, 32, 32)
    y3 = x3.clone()
    y3[0] += torch.randn_like(y3[0])
    with torch.no_grad():
        a, b = (model.forward_head(model.forward_features(t), pre_logits=True) for t in (x3, y3))
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)


def test_any_resolution_and_padding() -> None:
    """Windows pad when they do not divide the map; ViT resamples its position table."""
    m = mixerlab.create_model("u_swin_micro", img_size=48, in_chans=3, num_classes=4, window_size=5).eval()
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 4)  # stage maps 12, 6, 3, 2: 12 and 6 need padding
    assert m(torch.randn(1, 3, 64, 80)).shape == (1, 4)  # non-square, other size than built for
    v = mixerlab.create_model("vit_c_1gf", img_size=32, num_classes=4).eval()
    assert v(torch.randn(1, 3, 48, 64)).shape == (1, 4)


def test_window_padding_is_masked() -> None:
    """Padded keys are masked: the real tokens of a partly padded window attend only to each other
    (checked against attention computed by hand over those tokens)."""
    from mixerlab.mixers import MixerContext, build_mixer
    from mixerlab.mixers.window import relative_position_index

    torch.manual_seed(0)
    m = build_mixer("window", MixerContext(dim=8, num_heads=2, index=0, resolution=(6, 6)), window_size=4,
                    window_fit="pad").eval()
    x = torch.randn(1, 6, 6, 8)
    with torch.no_grad():
        y = m(x)[:, 4:6, 0:4].reshape(1, 8, 8)  # window rows 4-7 hold real rows 4-5 + 2 padded rows
        tok = x[:, 4:6, 0:4].reshape(1, 8, 8)
        q, k, v = m.qkv(tok).reshape(1, 8, 3, 2, 4).permute(2, 0, 3, 1, 4)
        idx = relative_position_index(4, 4)[:8, :8].reshape(-1)  # the first two window rows
        bias = m.relative_position_bias_table[idx].view(8, 8, 2).permute(2, 0, 1)
        attn = ((q @ k.transpose(-2, -1)) * 4**-0.5 + bias).softmax(-1)
        ref = m.proj((attn @ v).transpose(1, 2).reshape(1, 8, 8))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_config_roundtrip_and_yaml(tmp_path) -> None:
    cfg = mixerlab.model_config("u_swin_micro", img_size=32, in_chans=1, num_classes=10, window_size=4)
    path = tmp_path / "model.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    a = mixerlab.build_model(path)
    b = mixerlab.build_model(cfg.to_dict())
    assert a.config == cfg == b.config
    torch.manual_seed(0)
    sd = a.state_dict()
    b.load_state_dict(sd)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_attention_activation_override() -> None:
    for act in ("softmax", "relu", "layernorm", "relu_layernorm", "sigmoid"):
        m = timm.create_model("u_swin_micro", img_size=32, in_chans=1, num_classes=10, window_size=4, attn_act=act)
        assert {mx.attn_act for _, mx in m.mixers()} == {act}
        assert torch.isfinite(m(torch.randn(2, 1, 32, 32))).all()
    v = mixerlab.create_model("vit_p_1gf", img_size=32, attn_act="relu")
    assert {mx.attn_act for _, mx in v.mixers()} == {"relu"}


def test_no_weight_decay_lists_tables() -> None:
    m = mixerlab.create_model("vit_small_ml")
    assert {"pos_embed", "cls_token"} <= m.no_weight_decay()
    s = mixerlab.create_model("u_swin_micro")
    assert any(n.endswith("relative_position_bias_table") for n in s.no_weight_decay())


@pytest.mark.parametrize("name", ["u_swin_micro", "vit_p_1gf"])
def test_prune_intermediate_layers(name: str) -> None:
    model = small(name).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        keep = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert model.prune_intermediate_layers([1]) == [1]
        assert len(getattr(model, model.trunk)) == 2 and model.num_classes == 0
        assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], keep[0])


def test_grad_checkpointing_gives_same_gradients() -> None:
    for name in ("u_swin_micro", "vit_p_1gf"):
        a = small(name)
        b = small(name)
        b.set_grad_checkpointing(True)
        x = torch.randn(2, 1, 32, 32)
        a(x).sum().backward()
        b(x).sum().backward()
        for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("hw", [(1, 1), (2, 1), (1, 3)])
def test_downsample_bf16_one_pixel_map(hw: tuple[int, int]) -> None:
    """A 16-px U-ConvNeXt shrinks to 1x1 before its last downsample; bf16 gradients there must be exact zeros
    on the padding-only taps (oneDNN returns garbage for them without the explicit padding), and equal fp32's."""
    from mixerlab.archs.hierarchical import Downsample

    torch.manual_seed(0)
    down = Downsample("conv3x3", 16, 16, 1e-6)
    x = torch.randn(8, *hw, 16)
    r = torch.randn(8, (hw[0] + 1) // 2, (hw[1] + 1) // 2, 16)  # a loss whose gradient LayerNorm does not cancel
    for _ in range(20):  # the garbage is intermittent: repeat
        down.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (down(x).float() * r).sum().backward()
        g = down.conv.weight.grad
        assert torch.isfinite(g).all()
        # Rows/cols of the kernel that only ever see padding (the map is one pixel along that side) get no gradient.
        if hw[0] == 1:
            assert (g[:, :, 0] == 0).all() and (g[:, :, 2] == 0).all()
        if hw[1] == 1:
            assert (g[:, :, :, 0] == 0).all() and (g[:, :, :, 2] == 0).all()
    down.zero_grad()
    (down(x).float() * r).sum().backward()
    ref = down.conv.weight.grad.clone()
    down.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (down(x).float() * r).sum().backward()
    torch.testing.assert_close(down.conv.weight.grad, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


# ---- timm's keywords and contract (timm's own test_models.py runs in `make timm-contract`) -------------
def test_features_only_through_timm() -> None:
    f = timm.create_model("u_hybrid_window_micro", features_only=True, out_indices=(1, 3), img_size=64)
    assert f.feature_info.channels() == [64, 256] and f.feature_info.reduction() == [8, 32]
    outs = f(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 8, 8), (2, 256, 2, 2)]
    # the extractor is pruned: nothing after stage 4 (head) and nothing unused
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in f.parameters())
    v = mixerlab.create_model("vit_p_1gf", features_only=True, img_size=32)
    assert [tuple(o.shape) for o in v(torch.randn(1, 3, 32, 32))] == [(1, 192, 2, 2)] * 3


def test_device_dtype_and_global_pool_keywords() -> None:
    m = timm.create_model("u_swin_micro", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in m.parameters()} == {("meta", torch.bfloat16)}
    assert m.pretrained_cfg["pool_size"] == (7, 7)
    m = timm.create_model("u_convnext_micro", num_classes=0, global_pool="", img_size=64).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, int(256 * 1.5), 2, 2)  # conv-BN head map, unpooled
    with pytest.raises(mixerlab.ConfigError, match="global_pool"):
        timm.create_model("u_convnext_micro", global_pool="")  # unpooled maps need num_classes=0


def test_prune_removes_the_whole_head() -> None:
    m = small("u_swin_micro")
    m.prune_intermediate_layers(indices=[1])
    assert not [n for n, _ in m.named_parameters() if n.startswith("head.")]
    feats = m.forward_intermediates(torch.randn(2, 1, 32, 32), indices=[1], intermediates_only=True)
    feats[0].sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mixer_residual_hook_is_the_block_contract() -> None:
    """PVT's position table enters the residual stream through the mixer's own hook: a block is
    x' = mixer.stream(x); x' + mixer(norm1(x')) + ..., for sra as for every other mixer (identity there)."""
    m = small("u_pvt_micro").eval()
    blk = m.stages[0].blocks[0]
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        s = blk.mixer.stream(x)
        assert not torch.equal(s, x)  # first block of the stage owns the table
        y = s + blk.ls1(blk.mixer(blk.norm1(s)))
        assert torch.equal(blk(x), y + blk.ls2(blk.mlp(blk.norm2(y))))
        assert torch.equal(m.stages[0].blocks[1].mixer.stream(x), x)
        assert torch.equal(small("u_swin_micro").stages[0].blocks[0].mixer.stream(x), x)
