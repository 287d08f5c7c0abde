"""Complexity counter: hand-computed cases, published numbers, the golden table and the CLI.

``tests/golden.yaml`` holds one row per registered model (measured params / GMACs / activations at
3 x 224 x 224, plus the published numbers with their source). The tests read the registry, so a
model registered without a row fails here with the row to add.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import mixerlab
from mixerlab.cli import main
from mixerlab.complexity import ComplexityRecord, CostCounter, complexity, register_formula
from mixerlab.config import ConfigError
from mixerlab.mixers import MixerContext, build_mixer

cx_module = sys.modules["mixerlab.complexity"]  # the package exports the function under the same name
GOLDEN = yaml.safe_load((Path(__file__).parent / "golden.yaml").read_text())
ROWS: dict[str, dict] = GOLDEN["models"]
PUBLISHED = sorted(n for n, row in ROWS.items() if "published" in row)


@functools.cache
def measured(name: str) -> ComplexityRecord:
    return complexity(name)


def _row(rec: ComplexityRecord) -> str:
    return (f"{rec.model}:\n    params_m: {rec.params_m:.4f}\n    gmacs: {rec.gmacs:.4f}\n"
            f"    activations_m: {rec.activations_m:.4f}")


# ---- hand-computed cases ---------------------------------------------------------------------------


def test_linear_and_convs_exact():
    lin = complexity(nn.Linear(8, 16), input_size=(5, 8))
    assert (lin.params, lin.macs, lin.activations) == (8 * 16 + 16, 5 * 8 * 16, 5 * 16)
    conv = complexity(nn.Conv2d(3, 4, 3, padding=1), input_size=(3, 6, 6))
    assert (conv.params, conv.macs, conv.activations) == (4 * 3 * 9 + 4, 36 * 4 * 3 * 9, 36 * 4)
    strided = complexity(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), input_size=(3, 7, 7))
    assert strided.macs == 16 * 4 * 3 * 9  # 4 x 4 outputs
    # The dynamic-conv fast path: a batch of B=2 samples x C=6 channels as one conv with B*C groups.
    grouped = complexity(nn.Conv2d(12, 12, 5, padding=2, groups=12, bias=False), input_size=(12, 8, 8))
    assert grouped.macs == 12 * 64 * 25
    transposed = complexity(nn.ConvTranspose2d(4, 2, 2, stride=2), input_size=(4, 3, 3))
    assert transposed.macs == 4 * 9 * 2 * 4  # every input element meets C_out * k * k weights


@pytest.mark.parametrize("act,fused", [("softmax", True), ("softmax", False), ("relu", False),
                                       ("layernorm", False)])
def test_global_attention_exact(act, fused):
    c, h, n = 8, 2, 16
    mixer = build_mixer("attention", MixerContext(dim=c, num_heads=h, resolution=(4, 4)), attn_act=act, fused=fused)
    rec = complexity(mixer, input_size=(4, 4, c))
    assert rec.macs == 4 * n * c * c + 2 * n * n * c
    # qkv output, the h N x N kernels, the attention output, the projection output
    assert rec.activations == 3 * n * c + h * n * n + n * c + n * c
    assert rec.params == 4 * c * c + 4 * c


def test_window_attention_in_model_exact():
    """U-Swin micro, stage 3: a 14 x 14 map of width 128 in four 7 x 7 windows."""
    rec = measured("u_swin_micro")
    n, c = 14 * 14, 128
    assert rec.breakdown["stages.2.blocks.0.mixer"].macs == 4 * n * c * c + 2 * n * 49 * c
    assert rec.breakdown["stages.2.blocks.1.mixer"].macs == 4 * n * c * c + 2 * n * 49 * c  # shifted: same


def test_fused_sdpa_kernel_counted_like_explicit_matmuls():
    """On the CPU, SDPA runs one fused ATen op (not two bmm): it must cost the same."""
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 5)
    with CostCounter() as fused:
        F.scaled_dot_product_attention(q, k, v)
    with CostCounter() as explicit:
        (q @ k.transpose(-2, -1)).softmax(-1) @ v
    assert fused.macs == explicit.macs == 2 * 3 * 10 * 12 * (8 + 5)
    assert fused.activations == explicit.activations == 2 * 3 * 10 * (12 + 5)


@pytest.mark.parametrize("name", ["vit_p_1gf", "u_swin_micro"])
def test_fused_and_explicit_softmax_models_agree(name):
    a, b = complexity(name, fused=True), complexity(name, fused=False)
    assert (a.macs, a.activations, a.params) == (b.macs, b.activations, b.params)


@pytest.mark.parametrize("mode,per_output", [("bilinear", 4), ("nearest", 1), ("bicubic", 16)])
def test_grid_sampler_counted(mode, per_output):
    class Sample(nn.Module):
        def forward(self, x):
            grid = torch.zeros(1, 5, 7, 2, device=x.device)
            return F.grid_sample(x, grid, mode=mode, align_corners=False)

    assert complexity(Sample(), input_size=(3, 9, 9)).macs == 3 * 5 * 7 * per_output


def test_register_formula(monkeypatch):
    monkeypatch.setattr(cx_module, "FORMULAS", dict(cx_module.FORMULAS))
    pool = nn.AvgPool2d(2)
    assert complexity(pool, input_size=(2, 4, 4)).macs == 0  # pooling is not counted by default
    register_formula(torch.ops.aten.avg_pool2d.default, lambda x, *a, out, **k: out.numel() * 4)
    rec = complexity(pool, input_size=(2, 4, 4))
    assert (rec.macs, rec.activations) == (2 * 4 * 4, 2 * 2 * 2)
    with pytest.raises(TypeError, match="op="):
        register_formula(F.avg_pool2d, lambda *a, **k: 0)


# ---- records, breakdown, inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u_swin_micro", "vit_c_1gf", "dwnet_tiny"])
def test_breakdown_sums_to_total(name):
    rec = measured(name)
    top = {k: v for k, v in rec.breakdown.items() if "." not in k}
    assert sum(v.macs for v in top.values()) == rec.macs
    assert sum(v.activations for v in top.values()) == rec.activations
    root_params = rec.params - sum(v.params for v in top.values())
    assert root_params == (0 if name != "vit_c_1gf" else 192 + 197 * 192)  # class token + position table
    stage = "stages.2" if name != "vit_c_1gf" else "blocks"
    depth = stage.count(".") + 1
    children = {k: v for k, v in rec.breakdown.items() if k.startswith(stage + ".") and k.count(".") == depth}
    assert children and sum(v.macs for v in children.values()) == rec.breakdown[stage].macs
    d = rec.to_dict()
    assert d["gflops"] == pytest.approx(2 * d["gmacs"]) and d["breakdown"][stage]["macs"] == rec.breakdown[stage].macs


def test_module_input_left_untouched_and_equal_to_name():
    model = mixerlab.create_model("u_swin_micro", img_size=64, depths=[1, 1, 2, 1])
    before = [p.detach().clone() for p in model.parameters()]
    rec = complexity(model, input_size=(3, 64, 64))
    assert all(p.device.type == "cpu" and torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    by_name = complexity("u_swin_micro", input_size=64, depths=[1, 1, 2, 1])
    assert (rec.params, rec.macs, rec.activations) == (by_name.params, by_name.macs, by_name.activations)
    assert complexity(model).input_size == (3, 64, 64)  # from the model's pretrained_cfg


def test_config_input_matches_name():
    rec = complexity(mixerlab.model_config("vit_p_1gf"), attn_act="relu")
    ref = measured("vit_p_1gf")
    assert (rec.model, rec.params, rec.macs, rec.activations) == ("config", ref.params, ref.macs, ref.activations)


def test_input_size_builds_the_model_for_it():
    rec = complexity("vit_p_1gf", input_size=(1, 112, 112))
    assert rec.input_size == (1, 112, 112)
    stem = rec.breakdown["stem"]
    assert (stem.params, stem.macs) == (16 * 16 * 192 + 192, 49 * 16 * 16 * 192)
    assert rec.params == measured("vit_p_1gf").params - 2 * 16 * 16 * 192 - (197 - 50) * 192


def test_bad_arguments():
    with pytest.raises(ConfigError, match="overrides"):
        complexity(nn.Linear(2, 2), input_size=(2,), attn_act="relu")
    with pytest.raises(ConfigError, match="input_size"):
        complexity("vit_p_1gf", input_size=(224, 224))
    with pytest.raises(ConfigError, match="img_size"):
        complexity("vit_p_1gf", input_size=100)
    with pytest.raises(TypeError, match="model_or_name"):
        complexity(3)


def test_counts_36_gmac_model_quickly():
    t = time.perf_counter()
    rec = complexity("vit_p_36gf")
    assert time.perf_counter() - t < 20
    assert rec.gmacs > 35


# ---- golden table ------------------------------------------------------------------------------------


def test_golden_has_no_stale_rows():
    stale = sorted(set(ROWS) - set(mixerlab.list_models()))
    assert not stale, f"tests/golden.yaml has rows for unregistered models {stale}: remove them"


@pytest.mark.parametrize("name", mixerlab.list_models())
def test_measured_matches_golden(name):
    rec = measured(name)
    if name not in ROWS:
        pytest.fail(f"model {name!r} has no row in tests/golden.yaml; add (and a 'published' entry if a "
                    f"source gives numbers):\n  {_row(rec)}")
    row = ROWS[name]
    got = {"params_m": rec.params_m, "gmacs": rec.gmacs, "activations_m": rec.activations_m}
    for key, value in got.items():
        assert math.isclose(value, row[key], rel_tol=1e-3), f"{name}.{key}: measured {value:.4f}, golden {row[key]}"


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_numbers(name):
    rec, pub = measured(name), ROWS[name]["published"]
    assert pub["source"] in GOLDEN["sources"]
    assert math.isclose(rec.params_m, pub["params_m"], rel_tol=0.01), f"{name}: {rec.params_m:.3f} M params"
    assert math.isclose(rec.gmacs, pub["gmacs"], rel_tol=0.03), f"{name}: {rec.gmacs:.3f} GMACs"
    if "activations_m" in pub:
        assert math.isclose(rec.activations_m, pub["activations_m"], rel_tol=0.03)


def test_every_model_with_a_published_source_is_checked():
    # Guards the table itself: the ViT, U-Swin, DWNet and timm-peer rows must keep their citations.
    expected = {f"vit_{s}_{g}" for s in "pc" for g in ("1gf", "4gf", "18gf", "36gf")}
    expected |= {f"u_swin_{s}" for s in ("micro", "tiny", "small", "base")}
    expected |= {"dwnet_tiny", "dwnet_base", "swin_tiny_ml", "vit_small_ml", "convnext_tiny_ml"}
    assert expected <= set(PUBLISHED)


# ---- CLI ------------------------------------------------------------------------------------------------


def test_cli_models_table(capsys, monkeypatch):
    # Reuse the counts of the golden tests (the CLI calls the same function without overrides).
    monkeypatch.setattr("mixerlab.cli.complexity", lambda name, **kw: complexity(name, **kw) if kw else measured(name))
    assert main(["models", "vit_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "params", "(M)"]
    rows = [line.split() for line in lines[1:] if line.startswith("vit_")]
    names = mixerlab.list_models("vit_*")
    assert [r[0] for r in rows] == names and len(names) >= 8
    for r in rows:
        assert float(r[1]) == pytest.approx(ROWS[r[0]]["params_m"], abs=0.006)
        assert float(r[2]) == pytest.approx(ROWS[r[0]]["gmacs"], abs=0.0006)
        assert r[4] == "3x224x224"
    assert "GMACs" in lines[-1]


def test_cli_models_json_and_csv(capsys):
    assert main(["models", "vit_p_1gf", "--format", "json", "--img-size", "112", "--in-chans", "1"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["input_size"] == "1x112x112"
    assert row["params_m"] == pytest.approx(complexity("vit_p_1gf", input_size=(1, 112, 112)).params_m, abs=1e-4)
    assert main(["models", "u_swin_micro", "--format", "csv"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header == "model,params_m,gmacs,activations_m,input_size"
    assert float(line.split(",")[2]) == pytest.approx(ROWS["u_swin_micro"]["gmacs"], abs=1e-4)


def test_cli_errors(capsys):
    assert main(["models", "no_such_*"]) == 2
    assert "PATTERN='no_such_*' matches no model" in capsys.readouterr().err
    assert main(["models", "vit_p_1gf", "--img-size", "100"]) == 2
    assert "img_size=100" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "--format", "xml"])


def test_elementwise_products_of_dynamic_kernels_are_counted() -> None:
    """idynconv applies per-position kernels with elementwise products; the mixer declares them
    (``elementwise_macs``) and the counter adds them: exact count by hand on a 5x5 grid."""
    from mixerlab.mixers import MixerContext, build_mixer

    m = build_mixer("idynconv", MixerContext(dim=8, num_heads=2, resolution=(5, 5)), kernel_size=3, proj=False,
                    groups=2)
    r = complexity(m, input_size=(5, 5, 8))
    n = 25
    generator = n * 8 * 2 + n * 2 * (2 * 9)  # 1x1 conv 8 -> 2, then 1x1 conv 2 -> G * K^2
    assert r.macs == generator + n * 8 * 9  # every output element sums K^2 products
