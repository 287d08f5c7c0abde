"""The unfold-based reference operators of benchmarks/unfold_reference.py compute exactly the mixers' functions
(float64), so the speed-ups that script reports compare like with like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import unfold_reference as ref

from mixerlab.mixers.attend import ATTN_ACTS


def randomise_(m: torch.nn.Module) -> torch.nn.Module:
    """Every parameter redrawn (zero-initialised layers and LayerScale-free paths must not hide a bug)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return m


@pytest.mark.parametrize("name", ["dynconv", "idynconv", "dma"])
@pytest.mark.parametrize("side", [14, 9])
def test_conv_references_equal_the_mixers(name: str, side: int) -> None:
    mixer, args, reference = ref.CASES[name]
    m = randomise_(ref.build(mixer, args, 16, 2, side, torch.float64))
    x = torch.randn(2, side, side, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(reference(m, x), m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", ATTN_ACTS)
def test_halo_reference_equals_the_mixer(act: str) -> None:
    m = randomise_(ref.build("halo", {"block_size": 7, "halo_size": 3, "attn_act": act}, 16, 2, 14, torch.float64))
    x = torch.randn(2, 14, 14, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ref.halo_reference(m, x), m(x), rtol=1e-10, atol=1e-10)
