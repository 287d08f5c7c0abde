"""Measured mixer properties (SPEC 8.4) against Han et al.'s table (SPEC 2.4) and the mixers' definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mixerlab.analysis.properties import (
    FALLBACK,
    PropertiesRecord,
    channel_classes,
    chebyshev_radius,
    coupling,
    default_specs,
    position_difference,
    properties,
    vjp_rows,
)
from mixerlab.cli import main
from mixerlab.errors import ConfigError
from mixerlab.mixers import MIXERS, Mixer, MixerContext
from tiny_runs import needs_fmnist

FIELDS = {"mixer", "support_radius", "sparse", "shared_across_positions", "shared_across_channels", "channel_group",
          "dynamic", "channel_coupling", "notes"}

# The defaults of properties(): dim 32, 4 heads (8 channels per head), a 14 x 14 map.
# (sparse, shared_across_positions, shared_across_channels, channel_group, dynamic, channel_coupling)
EXPECTED: dict[str, tuple[bool, bool, bool, int, bool, str]] = {
    # Han et al. (SPEC 2.4), "global attention": global support, position-specific, shared within a head
    # (32 / 4 = 8 channels), dynamic; qkv and proj are dense Linears.
    "attention": (False, False, True, 8, True, "dense"),
    # Han et al., "local (window) attention": a 7 x 7 window of the 14 x 14 map, otherwise as global attention.
    "window": (True, False, True, 8, True, "dense"),
    # Han et al., "depth-wise conv": a 7 x 7 kernel shared by all positions, one per channel, static; the
    # U-ConvNeXt form has 1 x 1 convs around it (dense coupling).
    "dwconv": (True, True, False, 1, False, "dense"),
    # DWNet's block: the same static 7 x 7 depth-wise conv between BN / ReLU / 1 x 1 convs.
    "dwnet": (True, True, False, 1, False, "dense"),
    # Han et al., "dynamic depth-wise conv (homogeneous)": one kernel per sample and channel from GAP(x).
    "dynconv": (True, True, False, 1, True, "dense"),
    # Han et al., "inhomogeneous dynamic dw conv": a kernel per position, shared within a group; DWNet's split
    # G = dim // heads = 8 groups, i.e. 4 channels per kernel.
    "idynconv": (True, False, True, 4, True, "dense"),
    # DMFormer: static multi-level depth-wise branches (position-shared, per channel), made input-adaptive by
    # the sigmoid(FC(GAP(x))) gate: dynamic; the 1 x 1 fusion and the gate's FCs couple channels.
    "dma": (True, True, False, 1, True, "dense"),
    # PoolFormer: one 3 x 3 average (minus identity) for every position and every channel, static, no channel mixing.
    "pooling": (True, True, True, 32, False, "none"),
    # Identity: each token only itself, the same (unit) kernel everywhere and for every channel.
    "identity": (True, True, True, 32, False, "none"),
    # DCNv3: 3 x 3 deformed sampling points and weights per position and group (4 groups = heads, 8 channels
    # each), from the input once the zero-initialised offset / weight layers are randomised.
    "dcn": (True, False, True, 8, True, "dense"),
    # Halo attention: 7 x 7 blocks attend to their 13 x 13 halo window (local, clipped to the map), per head.
    "halo": (True, False, True, 8, True, "dense"),
    # PVT's spatial-reduction attention: global keys from a 2 x 2-reduced map, per head, dynamic.
    "sra": (False, False, True, 8, True, "dense"),
    # Zhou et al.'s depth-wise attention: every channel its own head (no sharing across channels), dynamic,
    # local with 7 x 7 windows, global without.
    "dwattn(window_size=7)": (True, False, False, 1, True, "dense"),
    "dwattn(window_size=None)": (False, False, False, 1, True, "dense"),
}
# Support radius (Chebyshev, tokens, 99% of the mass, mean over the queries 3..10): exact for kernels whose
# outermost taps carry more than 1% of the mass; bounds otherwise.
RADIUS: dict[str, tuple[float, float]] = {
    "dwconv": (3, 3), "dwnet": (3, 3), "dynconv": (3, 3), "idynconv": (2, 3),  # 7 x 7 kernels
    "dma": (6, 6),  # 7 x 7 dilated by 2: taps up to 6 away
    "pooling": (1, 1), "identity": (0, 0),
    "dcn": (1, 3.5),  # 3 x 3 points plus fractional offsets (bilinear)
    "window": (3, 6), "dwattn(window_size=7)": (3, 6),  # inside a 7 x 7 window: at most 6 from the query
    "halo": (3, 9),  # a block's window reaches 3 + 6 tokens from its corner query
    "attention": (7, 10), "sra": (7, 10), "dwattn(window_size=None)": (7, 10),  # the whole map from 3..10
}


def check_row(row: dict[str, Any]) -> None:
    got = (row["sparse"], row["shared_across_positions"], row["shared_across_channels"], row["channel_group"],
           row["dynamic"], row["channel_coupling"])
    assert got == EXPECTED[row["mixer"]], (row["mixer"], got, row["notes"])
    lo, hi = RADIUS[row["mixer"]]
    assert lo <= row["support_radius"] <= hi, (row["mixer"], row["support_radius"])


@pytest.fixture(scope="module")
def record() -> PropertiesRecord:
    return properties(inputs="random")  # structure must not depend on what the grids show (real ones: CLI test)


def test_every_row_reproduces_the_table(record):
    rows = [r.__dict__ for r in record.rows]
    assert sorted(r["mixer"] for r in rows) == sorted(EXPECTED)
    for row in rows:
        check_row(row)
    assert record.inputs["kind"] == "random" and record.dim == 32 and record.num_heads == 4


def test_every_registered_mixer_has_a_row(record):
    names = {r.mixer.split("(")[0] for r in record.rows}
    assert names == set(MIXERS)
    assert [r.mixer for r in record.rows if r.mixer.startswith("dwattn")] == ["dwattn(window_size=7)",
                                                                                "dwattn(window_size=None)"]


def test_notes_say_how_each_aggregation_was_isolated(record):
    by = {r.mixer: r.notes for r in record.rows}
    assert by["dcn"]["randomised"] == ["sampling_offsets", "attention_weights"]
    assert all("randomised" not in n for m, n in by.items() if m != "dcn")  # nothing else is zero-initialised
    assert by["attention"]["aggregation"].startswith("A v") and "kernel = .kernel(v)" in by["dynconv"]["aggregation"]
    assert by["dma"]["evidence"]["aggregation_cross_channel"] > 0.5  # its aggregation includes the 1x1 fusion
    assert all(n["evidence"]["aggregation_cross_channel"] == 0 for m, n in by.items() if m != "dma")
    assert all(n["aggregation"] != FALLBACK for n in by.values())
    # margins: the dynamic and head-distinguishing differences are far above the 1e-5 tolerance
    assert by["dma"]["evidence"]["input_diff"] > 1e-4 and by["attention"]["evidence"]["channel_diff_between"] > 1e-4


def test_zero_initialised_dcn_looks_static_unless_randomised():
    # DCNv3 starts with zero offsets and weights: a fixed 3 x 3 average (softmax of zeros) at every position.
    row = properties(["dcn"], inputs="random", randomise=False).rows[0]
    assert (row.dynamic, row.shared_across_positions, row.support_radius, row.channel_group) == (False, True, 1, 32)
    assert "randomised" not in row.notes


class Channel1x1(Mixer):
    """A mixer the analysis has never seen: a 1 x 1 conv (Han et al.'s contrast row)."""

    def __init__(self, ctx: MixerContext) -> None:
        super().__init__()
        self.fc = nn.Linear(ctx.dim, ctx.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_new_mixer_is_probed_by_the_fallback(monkeypatch):
    monkeypatch.setitem(MIXERS, "toy1x1", Channel1x1)
    assert ("toy1x1", {}) in default_specs()
    row = properties(["toy1x1"], inputs="random", dim=16, num_heads=2).rows[0]
    # Han et al., "1x1 conv / MLP": spatially only itself, shared across positions, dense across channels, static.
    assert row.notes["aggregation"] == FALLBACK
    assert (row.support_radius, row.sparse, row.shared_across_positions, row.dynamic) == (0, True, True, False)
    assert (row.shared_across_channels, row.channel_group, row.channel_coupling) == (False, 1, "dense")


def test_vjp_rows_are_the_jacobian_rows():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4 * 5 * 3, 4 * 5 * 3, generator=g, dtype=torch.float64)

    def fn(v):
        return (v.flatten(1) @ w.T).view(v.shape)

    at = torch.randn(1, 4, 5, 3, generator=g, dtype=torch.float64)
    probes = [(1, 2, 0), (3, 4, 2), (0, 0, None)]
    rows = vjp_rows(fn, at, probes, chunk=2)
    j = w.view(4, 5, 3, 4, 5, 3)
    assert torch.equal(rows[0], j[1, 2, 0]) and torch.equal(rows[1], j[3, 4, 2])
    assert torch.allclose(rows[2], j[0, 0].sum(0))  # all channels at once: the sum of their rows


def test_radius_classes_coupling_and_position_definitions():
    m = torch.zeros(9, 9)
    m[4, 4], m[4, 7] = 1.0, 0.02  # 2% of the mass 3 away: radius 3 holds it all, radius 0 only 98%
    assert chebyshev_radius(m, (4, 4)) == 3 and chebyshev_radius(m, (4, 4), frac=0.98) == 0
    k = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.5], [1.0, 2.5]])
    classes, within, between = channel_classes(k, 1e-5)
    assert classes == [[0, 1], [2, 3]] and within == 0 and between > 0.1
    assert coupling(torch.eye(4)) == ("none", 4)
    assert coupling(torch.block_diag(torch.ones(2, 2), torch.ones(2, 2))) == ("group", 2)
    assert coupling(torch.ones(4, 4)) == ("dense", 1)
    # a 3 x 3 kernel at two queries: the same as a function of the offset, clipped by the border at (0, 1)
    w = torch.arange(1.0, 10.0).view(3, 3)
    kern = torch.zeros(2, 1, 6, 6)
    kern[0, 0, 2:5, 2:5] = w
    kern[1, 0, 0:2, 0:3] = w[1:]
    assert position_difference(kern, [(3, 3), (0, 1)], (3, 3)) == 0
    kern[1, 0, 0, 0] += 1
    assert position_difference(kern, [(3, 3), (0, 1)], (3, 3)) > 0.01


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mixer_names": ["nope"]}, "mixer_names[0]"),
    ({"resolution": (6, 14)}, "resolution"),
    ({"num_heads": 5}, "num_heads=5"),
    ({"dtype": "float16"}, "dtype"),
    ({"inputs": "cifar"}, "inputs"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        properties(**kwargs)


@needs_fmnist
def test_cli_json_on_real_features_reproduces_the_table(capsys):
    assert main(["analyze", "properties", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and [r["mixer"] for r in rows] == [m for m in EXPECTED]
    for row in rows:
        assert set(row) == FIELDS
        check_row(row)


def test_cli_table(capsys, tmp_path):
    assert main(["analyze", "properties", "--inputs", "random", "--mixers", "identity", "dwconv",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["mixer", "radius", "sparse"]
    assert out[2].split() == ["identity", "0.00", "yes", "yes", "yes", "32", "no", "none"]
    assert out[3].split() == ["dwconv", "3.00", "yes", "yes", "no", "1", "no", "dense"]
    saved = json.loads((tmp_path / "properties.json").read_text())
    assert [r["mixer"] for r in saved["rows"]] == ["identity", "dwconv"] and saved["inputs"]["kind"] == "random"


# ---- a model's stage mixers, at the inputs they receive ------------------------------------------------------

@pytest.fixture(scope="module")
def swin_record() -> PropertiesRecord:
    return properties(model="u_swin_micro", img_size=32, in_chans=1)


@needs_fmnist
def test_model_stage_mixers_of_a_fresh_swin(swin_record):
    rows = swin_record.rows
    assert [r.mixer for r in rows] == [f"stages.{i}.blocks.0.mixer (window)" for i in range(4)]
    assert [r.notes["input"] for r in rows] == [[8, 8, 32], [4, 4, 64], [2, 2, 128], [1, 1, 256]]
    assert swin_record.source["kind"] == "name" and swin_record.source["randomise_zero_layers"] is True
    assert swin_record.inputs["kind"].startswith("model forward") and swin_record.inputs["img_size"] == [32, 32]
    # Stage 0: 4 x 4 windows of the 8 x 8 map: local, position-specific, dynamic, one kernel per head (1 head of 32).
    r0 = rows[0]
    assert (r0.sparse, r0.shared_across_positions, r0.dynamic, r0.shared_across_channels, r0.channel_group) == \
        (True, False, True, True, 32)
    # Stages 1, 2: the window is the whole (4 x 4, 2 x 2) map: global, still dynamic and shared within a head (32).
    for r in rows[1:3]:
        assert (r.sparse, r.dynamic, r.shared_across_channels, r.channel_group) == (False, True, True, 32), r
    # Stage 3: a 1 x 1 map, one key: the softmax weight is 1 whatever the input, so it measures static.
    r3 = rows[3]
    assert (r3.support_radius, r3.dynamic, r3.shared_across_positions, r3.channel_group) == (0, False, True, 256)
    assert all(r.channel_coupling == "dense" and "randomised" not in r.notes for r in rows)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from mixerlab.data import DataConfig
    from mixerlab.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="u_convnext_micro", model_args={"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]},
                      data=DataConfig(img_size=16, train_subset=64, eval_subset=32), epochs=1, batch_size=32,
                      device="cpu", run_dir=str(run_dir)))
    return run_dir


@needs_fmnist
def test_model_stage_mixers_of_a_trained_run(tiny_run, capsys):
    rec = properties(model=tiny_run)
    assert rec.source["trained"] is True and rec.source["randomise_zero_layers"] is False
    assert [r.mixer for r in rec.rows] == [f"stages.{i}.blocks.0.mixer (dwconv)" for i in range(4)]
    for r in rec.rows:  # trained weights, real inputs: still a static conv shared by all positions
        assert (r.shared_across_positions, r.dynamic, r.shared_across_channels) == (True, False, False), r
    assert main(["analyze", "properties", "--run", str(tiny_run), "--format", "json"]) == 0
    assert [r["mixer"] for r in json.loads(capsys.readouterr().out)] == [r.mixer for r in rec.rows]


def test_model_mode_refuses_the_mixer_name_options(capsys):
    with pytest.raises(ConfigError, match="mixer_names"):
        properties(["window"], model="u_swin_micro")
    with pytest.raises(ConfigError, match="inputs"):
        properties(model="u_swin_micro", inputs="random")
    with pytest.raises(ConfigError, match="img_size"):
        properties(img_size=32)
    assert main(["analyze", "properties", "--img-size", "32"]) != 0
    assert "--img-size needs --model NAME or --run DIR" in capsys.readouterr().err


@needs_fmnist
def test_cli_model_table(capsys):
    assert main(["analyze", "properties", "--model", "u_swin_micro", "--img-size", "32", "--in-chans", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["stages.0.blocks.0.mixer", "(window)", "2.75", "yes", "no", "yes", "32", "yes", "dense"]
    assert len(out) == 8 and "model u_swin_micro (fresh)" in out[-1]
