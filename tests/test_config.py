"""Bad configurations are rejected before any module is built, naming field, value and what is allowed."""

from __future__ import annotations

import pytest
import torch

import mixerlab
from mixerlab import ConfigError


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"mixer": {"name": "convolution_of_doom"}}, "mixer.name"),
    ({"stem": {"name": "hexagon"}}, "stem.name"),
    ({"heads": [1, 2, 4, 7]}, "heads[3]"),
    ({"depths": [2, 2, 9]}, "depths/dims/heads"),
    ({"img_size": 30}, "img_size"),
    ({"drop_path": -0.1}, "drop_path"),
    ({"drop_path_rate": 1.5}, "drop_path"),
    ({"attn_act": "tanh"}, "attn_act"),
    ({"window_size": 0}, "window_size"),
    ({"not_an_arg": 3}, "not_an_arg"),
    ({"mlp_ratio": [4, 4]}, "mlp_ratio"),
    ({"norm1": "groupnorm"}, "norm1"),
])
def test_bad_unified_configs(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        mixerlab.model_config("u_swin_micro", **overrides)
    assert needle in str(err.value)


def test_conv_stem_stride_product() -> None:
    with pytest.raises(ConfigError, match=r"stem.strides.*product of strides \(8\).*16"):
        mixerlab.model_config("vit_c_1gf", stem={"strides": [2, 2, 2, 1, 1]})
    with pytest.raises(ConfigError, match=r"stem\.channels"):
        mixerlab.model_config("vit_c_1gf", stem={"channels": [24, 48, 96, 192, 100]})


def test_kernel_must_be_odd() -> None:
    with pytest.raises(ConfigError, match="kernel_size=4"):
        mixerlab.model_config("u_convnext_micro", kernel_size=4)


def test_grid_mixer_needs_grid_in_isotropic_model() -> None:
    with pytest.raises(ConfigError, match="class_token=false"):
        mixerlab.model_config("vit_p_1gf", mixer={"name": "dwconv", "args": {}})
    # ... and works once the class token is dropped
    m = mixerlab.create_model("vit_p_1gf", img_size=32, mixer={"name": "dwconv", "args": {}},
                              class_token=False, head="avg")
    assert m.cls_token is None


def test_unknown_model_and_keys() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        mixerlab.create_model("u_swin_gigantic")
    with pytest.raises(ConfigError, match="config keys"):
        mixerlab.build_model({"arch": "hierarchical", "depthz": [1]})
    with pytest.raises(ConfigError, match="pretrained"):
        mixerlab.create_model("u_swin_micro", pretrained=True)


def test_validation_happens_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """No module is constructed for an invalid config."""
    from mixerlab.archs import hierarchical

    built = []
    monkeypatch.setattr(hierarchical.Stem, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError):
        mixerlab.create_model("u_swin_micro", heads=[3, 3, 3, 3])
    assert not built


# ---- validation once, one dialect -------------------------------------------------------------------
def test_create_model_validates_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One structural validation and one mixer check per stage (not per block) for a whole model."""
    from mixerlab.config import ModelConfig
    from mixerlab.mixers.window import WindowAttention

    calls = {"validate": 0, "check_args": 0}
    real_validate, real_check = ModelConfig.validate, WindowAttention.check_args.__func__

    def validate(self):  # type: ignore[no-untyped-def]
        calls["validate"] += 1
        return real_validate(self)

    def check_args(cls, *a, **k):  # type: ignore[no-untyped-def]
        calls["check_args"] += 1
        return real_check(cls, *a, **k)

    monkeypatch.setattr(ModelConfig, "validate", validate)
    monkeypatch.setattr(WindowAttention, "check_args", classmethod(check_args))
    m = mixerlab.create_model("u_swin_micro", img_size=32, in_chans=1, num_classes=10)
    assert calls == {"validate": 1, "check_args": 4}  # 4 stages, 15 blocks
    assert sum(1 for _ in m.mixers()) == 15


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"depths": [True, 2, 9, 2]}, "depths"),
    ({"in_chans": True}, "in_chans"),
    ({"stem": {"patch_size": True}}, "stem.patch_size"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"window_size": True}, "window_size"),
    ({"init": "xavier"}, "init"),
])
def test_booleans_and_non_integers_are_not_counts(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=rf"{needle}=.* is invalid"):
        mixerlab.model_config("u_swin_micro", **overrides)


def test_unknown_keyword_is_a_type_error_listing_the_allowed() -> None:
    """timm's contract: an argument no part of the model takes raises TypeError (and ours names the allowed)."""
    import timm

    with pytest.raises(TypeError, match=r"not_a_model_arg.*allowed are .*window_size"):
        timm.create_model("u_swin_micro", not_a_model_arg=1)
    with pytest.raises(ConfigError):
        mixerlab.create_model("u_hybrid_window_micro", pool_size=3)


# ---- small inputs: mixers fit their arguments to the map ----------------------------------------------
def test_small_maps_adapt_and_the_resolved_config_records_it() -> None:
    cfg = mixerlab.model_config("u_dma_micro", img_size=32, in_chans=1, num_classes=10)
    # 32 px -> maps 8, 4, 2, 1: the dilated 5x5 and 7x7 branches cannot reach real pixels past stage 1
    assert [m.args for m in cfg.mixer] == [{}, {"dilations": [1, 1, 1]}, {"dilations": [1, 1, 1]},
                                           {"dilations": [1, 1, 1]}]
    model = mixerlab.create_model("u_dma_micro", img_size=32, in_chans=1, num_classes=10)
    assert model.config == cfg
    assert [b.mixer.branches[1].dilation for s in model.stages for b in s.blocks][:3] == [(2, 2), (2, 2), (1, 1)]
    # rebuilding from the resolved config (as a plain dict, as records store it) gives the same model
    again = mixerlab.build_model(mixerlab.ModelConfig.from_dict(model.config.to_dict()))
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(again.eval()(x), model.eval()(x))
    assert again.config == cfg
    # the published 224-px configuration is left as it is
    assert mixerlab.model_config("u_dma_tiny").mixer == mixerlab.MixerConfig("dma", {})


# ---- per-stage mixers --------------------------------------------------------------------------------
def test_per_stage_mixers_round_trip_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    cfg = mixerlab.model_config("u_hybrid_window_micro", img_size=32, in_chans=1, num_classes=10)
    assert [m.name for m in cfg.mixer] == ["dwconv", "dwconv", "window", "window"]
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    back = mixerlab.ModelConfig.from_yaml(path)
    assert back == cfg
    model = mixerlab.build_model(path)
    kinds = [type(b.mixer).__name__ for s in model.stages for b in s.blocks]
    assert kinds == ["DWConv"] * 4 + ["WindowAttention"] * 11


def test_mixer_arguments_go_to_the_stages_that_take_them() -> None:
    cfg = mixerlab.model_config("u_hybrid_global_micro", attn_act="relu", kernel_size=5)
    assert [m.args for m in cfg.mixer] == [{"kernel_size": 5}] * 2 + [{"attn_act": "relu"}] * 2
    # a whole per-stage list as an override; a wrong length names the field
    cfg = mixerlab.model_config("u_swin_micro", mixer=[{"name": "pooling"}, {"name": "dwconv"},
                                                       {"name": "attention"}, {"name": "attention"}])
    assert [m.name for m in cfg.mixer] == ["pooling", "dwconv", "attention", "attention"]
    with pytest.raises(ConfigError, match=r"mixer=.*list of 4"):
        mixerlab.model_config("u_swin_micro", mixer=[{"name": "dwconv"}] * 3)
    with pytest.raises(ConfigError, match=r"mixer\[2\]\.name"):
        mixerlab.model_config("u_swin_micro", mixer=[{"name": "dwconv"}] * 2 + [{"name": "nope"}] * 2)


@pytest.mark.parametrize("late", ["window", "global"])
def test_hybrid_params_are_the_swapped_mixers(late: str) -> None:
    """A hybrid's parameter count is U-Swin's with the stage-1-2 mixers swapped for 7x7 dwconv mixers,
    each counted on a mixer built alone (an independent check of tests/golden.yaml's hybrid rows)."""
    from mixerlab.mixers import MixerContext

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    base = mixerlab.model_config("u_swin_tiny")
    late_mixer = {"window": ("window", {"window_size": 7}), "global": ("attention", {})}[late]
    expected = mixerlab.complexity("u_swin_tiny").params
    for i, (depth, dim, heads) in enumerate(zip(base.depths, base.dims, base.heads, strict=True)):
        ctx = MixerContext(dim=dim, num_heads=heads, stage=i, resolution=base.stage_grid(i))
        new = ("dwconv", {"kernel_size": 7}) if i < 2 else late_mixer
        expected += depth * (count(mixerlab.build_mixer(new[0], ctx, **new[1]))
                             - count(mixerlab.build_mixer("window", ctx, window_size=7)))
    assert mixerlab.complexity(f"u_hybrid_{late}_tiny").params == expected
