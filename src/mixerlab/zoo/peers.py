"""timm architectures rebuilt from mixerlab parts (SPEC 6): the oracle for correctness and the
baseline for speed. :func:`mixerlab.load_timm_weights` maps the timm weights onto them. Each is
initialised as timm initialises it: Swin and ViT trunc-normal linears (convs PyTorch default, via
``swin_like``), ConvNeXt every conv and linear."""

from __future__ import annotations

from ..config import MixerConfig, ModelConfig, StemConfig
from .dwnet import swin_like

# mixerlab name -> timm name
TIMM_PEERS = {"swin_tiny_ml": "swin_tiny_patch4_window7_224", "vit_small_ml": "vit_small_patch16_224",
              "convnext_tiny_ml": "convnext_tiny"}


def configs() -> dict[str, ModelConfig]:
    return {
        "swin_tiny_ml": swin_like([2, 2, 6, 2], 96, [3, 6, 12, 24], 0.2, MixerConfig("window", {"window_size": 7})),
        "vit_small_ml": ModelConfig(arch="isotropic", stem=StemConfig("patch", 16), mixer=MixerConfig("attention"),
                                    depths=[12], dims=[384], heads=[6], mlp_ratio=4.0, layer_scale=None,
                                    norm_eps=1e-6, class_token=True, pos_embed=True, head="token",
                                    init="trunc_normal_linear"),  # timm's ViT init: linears only
        "convnext_tiny_ml": ModelConfig(arch="hierarchical", stem=StemConfig("patch_norm", 4), block="convnext",
                                        mixer=MixerConfig("dwconv", {"kernel_size": 7, "proj": False}),
                                        depths=[3, 3, 9, 3], dims=[96, 192, 384, 768], heads=[3, 6, 12, 24],
                                        mlp_ratio=4.0, drop_path=0.1, layer_scale=1e-6, norm_eps=1e-6,
                                        downsample="ln_conv2x2", stage_norm=False, head="pool_norm"),
    }
