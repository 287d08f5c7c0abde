"""STM-Evaluation's unified models (Wang et al., 2022; SPEC section 3): one macro-architecture,
one engineering recipe, different spatial token mixers.

Parameter counts of u_swin / u_halo / u_pvt equal those of STM-Evaluation's own factories. Block
LayerNorm eps is 1e-6 as in their Swin and ConvNeXt blocks, and 1e-5 in the DCNv3 model as in theirs.
One simplification: their Halo and PVT blocks also use 1e-5, ours 1e-6, which changes no count and no
published number."""

from __future__ import annotations

from ..config import MixerConfig, ModelConfig, StemConfig

SCALES = ("micro", "tiny", "small", "base")

# depths / dims / heads / drop-path of U-Swin, also the default for mixers without their own table.
SWIN = {
    "micro": ([2, 2, 9, 2], [32, 64, 128, 256], [1, 2, 4, 8], 0.0),
    "tiny": ([2, 2, 6, 2], [96, 192, 384, 768], [3, 6, 12, 24], 0.2),
    "small": ([2, 2, 18, 2], [96, 192, 384, 768], [3, 6, 12, 24], 0.3),
    "base": ([2, 2, 18, 2], [128, 256, 512, 1024], [4, 8, 16, 32], 0.5),
}
# U-ConvNeXt has its own depths and drop-path; heads are unused (kept for divisibility checks).
CONVNEXT = {
    "micro": ([3, 3, 8, 3], SWIN["micro"][1], SWIN["micro"][2], 0.0),
    "tiny": ([2, 2, 9, 2], SWIN["tiny"][1], SWIN["tiny"][2], 0.1),
    "small": ([2, 2, 24, 2], SWIN["small"][1], SWIN["small"][2], 0.4),
    "base": ([2, 2, 24, 2], SWIN["base"][1], SWIN["base"][2], 0.5),
}
# U-DCNv3: its own depths and widths; "heads" are the DCN groups (STM-Eval passes them as num_heads).
DCN = {
    "micro": ([2, 2, 9, 2], [32, 64, 128, 256], [2, 4, 8, 16], 0.0),
    "tiny": ([4, 4, 18, 4], [64, 128, 256, 512], [4, 8, 16, 32], 0.1),
    "small": ([4, 4, 21, 4], [80, 160, 320, 640], [5, 10, 20, 40], 0.3),
    "base": ([4, 4, 21, 4], [112, 224, 448, 896], [7, 14, 28, 56], 0.5),
}
# U-PVT: its own depths, widths, heads and per-stage MLP ratios (base uses 4 everywhere).
PVT = {
    "micro": ([2, 2, 3, 2], [32, 64, 160, 256], [1, 2, 5, 8], 0.0),
    "tiny": ([3, 4, 9, 3], [64, 128, 320, 512], [1, 2, 5, 8], 0.1),
    "small": ([3, 4, 21, 3], [64, 128, 320, 512], [1, 2, 5, 8], 0.3),
    "base": ([3, 8, 45, 3], [64, 128, 320, 512], [1, 2, 5, 8], 0.5),
}
PVT_MLP = {"micro": [8, 8, 4, 4], "tiny": [8, 8, 4, 4], "small": [8, 8, 4, 4], "base": [4, 4, 4, 4]}
# PVT's spatial-reduction ratios, one per stage (given as one sra mixer config per stage).
PVT_SR = (8, 4, 2, 1)

# Mixers without a published table of their own get U-Swin's budget (a same-budget row each).
SAME_BUDGET = {
    "dynconv": MixerConfig("dynconv", {"kernel_size": 7}),
    "idynconv": MixerConfig("idynconv", {"kernel_size": 7}),
    "dma": MixerConfig("dma", {}),
    "dwattn": MixerConfig("dwattn", {"window_size": 7}),
    "pool": MixerConfig("pooling", {"pool_size": 3}),
    "identity": MixerConfig("identity", {}),
}


def unified(scale_table: dict[str, tuple[list[int], list[int], list[int], float]], scale: str,
            mixer: MixerConfig | list[MixerConfig], mlp_ratio: float | list[float] = 4.0,
            norm_eps: float = 1e-6) -> ModelConfig:
    """The MetaArch: unified stem, Conv3x3-s2 downsampling, LN after every stage, conv-BN head;
    trunc-normal (.02) init of every conv and linear (STM-Evaluation's ``_init_weights``)."""
    depths, dims, heads, dp = scale_table[scale]
    return ModelConfig(arch="hierarchical", stem=StemConfig("unified", patch_size=4), mixer=mixer,
                       depths=list(depths), dims=list(dims), heads=list(heads), mlp_ratio=mlp_ratio,
                       drop_path=dp, layer_scale=1e-6, norm1="ln", norm2="ln", norm_eps=norm_eps,
                       downsample="conv3x3", stage_norm=True, head="conv_bn", head_ratio=1.5)


def configs() -> dict[str, ModelConfig]:
    out = {}
    for s in SCALES:
        out[f"u_swin_{s}"] = unified(SWIN, s, MixerConfig("window", {"window_size": 7}))
        out[f"u_convnext_{s}"] = unified(CONVNEXT, s, MixerConfig("dwconv", {"kernel_size": 7}))
        # STM-Eval's DCNv3 blocks use LayerNorm eps 1e-5 (its other blocks 1e-6).
        out[f"u_dcn_{s}"] = unified(DCN, s, MixerConfig("dcn", {"kernel_size": 3, "dw_kernel_size": 3}),
                                    norm_eps=1e-5)
        out[f"u_halo_{s}"] = unified(SWIN, s, MixerConfig("halo", {"block_size": 7, "halo_size": 3}))
        out[f"u_pvt_{s}"] = unified(PVT, s, [MixerConfig("sra", {"sr_ratio": r}) for r in PVT_SR],
                                    mlp_ratio=PVT_MLP[s])
        for short, mixer in SAME_BUDGET.items():
            out[f"u_{short}_{s}"] = unified(SWIN, s, mixer)
    return out
