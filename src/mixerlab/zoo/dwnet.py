"""DWNet (Han et al., 2022; SPEC 5.5/5.6): Swin-T/B with window attention replaced by a 7x7
depth-wise convolution block and the MLP's LayerNorm by BatchNorm; dynamic and inhomogeneous
dynamic variants replace the static depth-wise conv by an input-dependent one."""

from __future__ import annotations

from ..config import MixerConfig, ModelConfig, StemConfig

SIZES = {"tiny": ([2, 2, 6, 2], 96, [3, 6, 12, 24], 0.2), "base": ([2, 2, 18, 2], 128, [4, 8, 16, 32], 0.5)}


def swin_like(depths: list[int], width: int, heads: list[int], drop_path: float, mixer: MixerConfig,
              norm1: str = "ln", norm2: str = "ln") -> ModelConfig:
    """Swin's macro-architecture: 4x4 patch embedding + LN, PatchMerging, final LN, avg pool; Swin's
    init (trunc-normal .02 linears, PyTorch-default convs), which DWNet's code keeps."""
    return ModelConfig(arch="hierarchical", stem=StemConfig("patch_norm", patch_size=4), mixer=mixer,
                       depths=list(depths), dims=[width * 2**i for i in range(len(depths))], heads=list(heads),
                       mlp_ratio=4.0, drop_path=drop_path, layer_scale=None, norm1=norm1, norm2=norm2,
                       norm_eps=1e-5, downsample="patch_merging", stage_norm=False, head="norm_pool",
                       init="trunc_normal_linear")


# DWNet variants: the depth-wise conv of the block is static, homogeneous dynamic (per-sample kernels)
# or inhomogeneous dynamic (per-position kernels shared by 32 channel groups, as DWNet's configs give).
VARIANTS = {"dwnet": {}, "dynamic_dwnet": {"conv": "dynamic"}, "idynamic_dwnet": {"conv": "idynamic", "groups": 32}}


def configs() -> dict[str, ModelConfig]:
    return {f"{v}_{s}": swin_like(d, w, h, dp, MixerConfig("dwnet", {"kernel_size": 7, **args}), norm1="none",
                                  norm2="bn")
            for v, args in VARIANTS.items() for s, (d, w, h, dp) in SIZES.items()}
