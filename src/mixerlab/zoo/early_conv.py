"""Isotropic ViTs of Xiao et al., 2021 ("Early Convolutions Help Transformers See Better"),
as configured in pycls (SPEC section 4): ViT_P with a 16x16 patchify stem, ViT_C with a
convolutional stem and one block fewer; initialised as pycls's ``init_weights_vit``
(``init='pycls_vit'``, see :mod:`mixerlab.init`), on which their stability study depends."""

from __future__ import annotations

from ..config import MixerConfig, ModelConfig, StemConfig

# name -> (width, mlp dim, heads, blocks of ViT_P)
SIZES = {"1gf": (192, 576, 3, 12), "4gf": (384, 1152, 6, 12), "18gf": (768, 3072, 12, 12),
         "36gf": (1024, 4096, 16, 14)}
# ViT_C stems: kernels, strides, channels (the last channel is the model width)
CONV_STEMS = {
    "1gf": ([3, 3, 3, 3, 1], [2, 2, 2, 2, 1], [24, 48, 96, 192, 192]),
    "4gf": ([3, 3, 3, 3, 1], [2, 2, 2, 2, 1], [48, 96, 192, 384, 384]),
    "18gf": ([3, 3, 3, 3, 3, 3, 1], [2, 2, 1, 2, 1, 2, 1], [64, 128, 128, 256, 256, 512, 768]),
    "36gf": ([3, 3, 3, 3, 3, 3, 1], [2, 2, 1, 2, 1, 2, 1], [64, 128, 128, 256, 256, 512, 1024]),
}


def vit(width: int, mlp_dim: int, heads: int, blocks: int, stem: StemConfig) -> ModelConfig:
    return ModelConfig(arch="isotropic", stem=stem, mixer=MixerConfig("attention"), depths=[blocks],
                       dims=[width], heads=[heads], mlp_ratio=mlp_dim / width, drop_path=0.0, layer_scale=None,
                       norm_eps=1e-6, class_token=True, pos_embed=True, head="token", init="pycls_vit")


def configs() -> dict[str, ModelConfig]:
    out = {}
    for size, (d, mlp, h, n) in SIZES.items():
        out[f"vit_p_{size}"] = vit(d, mlp, h, n, StemConfig("patch", patch_size=16))
        k, s, c = CONV_STEMS[size]
        # Xiao et al. remove one transformer block to pay for the convolutional stem.
        out[f"vit_c_{size}"] = vit(d, mlp, h, n - 1, StemConfig("conv", 16, list(k), list(s), list(c)))
    return out
