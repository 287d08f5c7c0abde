"""Bad configurations are rejected before any module is built, naming field, value and what is allowed."""

from __future__ import annotations

import pytest

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
