"""ERF analysis (SPEC 8.3) against ground truth: models whose spatial mixing is known exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import mixerlab
from mixerlab import cli
from mixerlab.analysis.erf import ERFRecord, centred_square, erf, stage_maps
from mixerlab.archs import MixerNet, build_model
from mixerlab.config import MixerConfig, ModelConfig, StemConfig
from mixerlab.data import DataBundle, InMemoryImages
from mixerlab.errors import ConfigError
from mixerlab.train import train
from tiny_runs import needs_fmnist, tiny


def bundle(size: int, n: int = 8, mean: float = 0.5, seed: int = 0) -> DataBundle:
    """Random grey uint8 images as a DataBundle (the ERF support does not depend on what the images show)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    ds = InMemoryImages(images, torch.arange(n) % 10, img_size=size, in_chans=1, mean=(mean,), std=(0.25,))
    return DataBundle(ds, ds, 10, (mean,), (0.25,))


def isotropic(mixer: MixerConfig, *, depth: int = 1, size: int = 16, patch: int = 1, dim: int = 8) -> MixerNet:
    """Patch stem, ``depth`` MetaBlocks without norms: the mixer is the only spatial operation."""
    return build_model(ModelConfig(arch="isotropic", stem=StemConfig("patch", patch), mixer=mixer, depths=[depth],
                                   dims=[dim], heads=[2], norm1="none", norm2="none", head="avg", img_size=size,
                                   in_chans=1, num_classes=10))


def exact_maps(model: torch.nn.Module, data: DataBundle, indices: list[int], batch_size: int = 4) -> list[torch.Tensor]:
    images = torch.stack([data.eval[i][0] for i in range(len(data.eval))]).double()
    return stage_maps(model.double().eval(), images, indices, batch_size)[0]


def support(m: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) of the nonzero entries."""
    rows, cols = (m > 0).any(1).nonzero().flatten(), (m > 0).any(0).nonzero().flatten()
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


def conv_rf(layers: list[tuple[int, int, int]], size: int, out_index: int) -> tuple[int, int]:
    """Input rows that output row ``out_index`` of a chain of (kernel, stride, padding) convs depends on."""
    sizes = [size]
    for k, s, p in layers:
        sizes.append((sizes[-1] + 2 * p - k) // s + 1)
    lo = hi = out_index
    for (k, s, p), n_in in zip(reversed(layers), reversed(sizes[:-1]), strict=True):
        lo, hi = max(lo * s - p, 0), min(hi * s - p + k - 1, n_in - 1)
    return lo, hi


def test_identity_mixer_erf_is_the_analytic_receptive_field_of_stem_and_downsampling():
    # u_identity_micro mixes space only in its stem (two 3x3 stride-2 convs) and the 3x3 stride-2
    # downsampling convs; the norms, MLPs and identity mixers are per position.
    model = mixerlab.create_model("u_identity_micro", img_size=32, in_chans=1, num_classes=10)
    data = bundle(32)
    maps = exact_maps(model, data, [0, 1, 2, 3])
    conv = (3, 2, 1)
    for stage, m in enumerate(maps):
        grid = 32 // 4 // 2**stage
        lo, hi = conv_rf([conv] * (2 + stage), 32, grid // 2)
        assert support(m) == (lo, hi, lo, hi), stage
        outside = torch.ones_like(m, dtype=torch.bool)
        outside[lo:hi + 1, lo:hi + 1] = False
        assert (m[outside] == 0).all()
    assert [conv_rf([conv] * (2 + s), 32, 32 // 4 // 2**s // 2) for s in range(4)] == \
        [(13, 19), (9, 23), (1, 31), (0, 31)]
    rec = erf(model, data, num_images=8, dtype="float64")
    for stage, st in enumerate(rec.stages):
        lo, hi = conv_rf([conv] * (2 + stage), 32, st.grid[0] // 2)
        assert st.side["0.99"] <= hi - lo + 1


@pytest.mark.parametrize("k", [3, 5])
def test_single_depthwise_kxk_mixer_has_a_kxk_erf(k):
    model = isotropic(MixerConfig("dwconv", {"kernel_size": k, "proj": False}))
    (m,) = exact_maps(model, bundle(16), [0])
    c, r = 8, k // 2
    assert support(m) == (c - r, c + r, c - r, c + r)


def test_global_attention_reaches_the_whole_map():
    # Patch 4 on 32 px: 8 x 8 tokens. A pixel's gradient can be negative for every image (ReLU drops it), so
    # reaching a token means some pixel of its 4 x 4 patch has a positive entry.
    def tokens_reached(m: torch.Tensor) -> torch.Tensor:
        return m.reshape(8, 4, 8, 4).amax(dim=(1, 3)) > 0

    (m,) = exact_maps(isotropic(MixerConfig("attention"), size=32, patch=4), bundle(32), [0])
    assert tokens_reached(m).all()
    (m_local,) = exact_maps(isotropic(MixerConfig("dwconv", {"kernel_size": 3, "proj": False}), size=32, patch=4),
                            bundle(32), [0])
    reached = torch.zeros(8, 8, dtype=torch.bool)
    reached[3:6, 3:6] = True  # the 3 x 3 tokens around the central token (4, 4)
    assert torch.equal(tokens_reached(m_local), reached)


def test_stack_of_depthwise_blocks_erf_equals_the_analytic_map_and_grows_with_depth():
    # Linear ground truth: patch-1 stem summing the pixel into every channel, each block x + box_3x3(x) (the
    # MLP branch zeroed), positive inputs, so d score / d x = C * (delta + box)^{*L} exactly.
    depth, size, dim = 4, 24, 8
    model = isotropic(MixerConfig("dwconv", {"kernel_size": 3, "proj": False}), depth=depth, size=size, dim=dim)
    with torch.no_grad():
        model.stem.proj.weight.fill_(1.0)
        model.stem.proj.bias.zero_()
        for blk in model.blocks:
            blk.mixer.dw.weight.fill_(1.0)
            blk.mixer.dw.bias.zero_()
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
    data = bundle(size, mean=0.0)  # pixels > 0 -> every input positive, every central feature positive
    maps = exact_maps(model, data, list(range(depth)))
    kernel = torch.zeros(1, 1, size, size, dtype=torch.float64)
    kernel[..., size // 2, size // 2] = 1.0
    for j, m in enumerate(maps):
        kernel = kernel + F.conv2d(kernel, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1)
        torch.testing.assert_close(m, dim * kernel[0, 0], rtol=1e-12, atol=0)
        c = size // 2
        assert support(m) == (c - j - 1, c + j + 1, c - j - 1, c + j + 1)
    rec = erf(model, data, num_images=8, dtype="float64")
    for t in ("0.2", "0.3", "0.5", "0.99"):
        areas = [st.area_ratio[t] for st in rec.stages]
        assert areas == sorted(areas), (t, areas)
        assert areas[-1] > areas[0], (t, areas)


def test_images_are_counted_exactly_and_batching_changes_nothing():
    model = mixerlab.create_model("u_convnext_micro", img_size=16, in_chans=1, num_classes=10).double().eval()
    images = torch.stack([bundle(16, n=5).eval[i][0] for i in range(5)]).double()
    batched = stage_maps(model, images, [0, 2], batch_size=2)[0]  # batches of 2, 2, 1
    single = [stage_maps(model, images[i:i + 1], [0, 2], batch_size=1)[0] for i in range(5)]
    for k in range(2):
        torch.testing.assert_close(batched[k], sum(s[k] for s in single) / 5, rtol=1e-10, atol=0)
    rec = erf(model, bundle(16, n=7), num_images=5, batch_size=2, dtype="float64")
    assert rec.num_images == 5
    m = batched[0]
    a = torch.log10(m + 1) / torch.log10(m + 1).max()
    assert torch.tensor(rec.stages[0].map, dtype=torch.float64).sub(a).abs().max() < 1e-3  # rounded to 3 decimals


def test_centred_square_definition():
    a = torch.zeros(9, 9, dtype=torch.float64)
    a[4, 4] = 1.0
    assert centred_square(a) == {0.2: 1, 0.3: 1, 0.5: 1, 0.99: 1}
    u = torch.ones(10, 10, dtype=torch.float64)  # even side: centre (5, 5); squares 1, 3, 5, 7, 9, then clipped 10
    # > 20% of 100: 25 (side 5); > 30%: 49; > 50%: 81 (side 9); > 99%: the whole map
    assert centred_square(u) == {0.2: 5, 0.3: 7, 0.5: 9, 0.99: 10}
    assert centred_square(torch.zeros(4, 4)) == dict.fromkeys((0.2, 0.3, 0.5, 0.99))


@pytest.mark.parametrize("kwargs, field", [({"num_images": 0}, "num_images"), ({"stages": [4]}, "stages"),
                                           ({"dtype": "float16"}, "dtype"), ({"batch_size": 0}, "batch_size")])
def test_bad_arguments_name_the_field(kwargs, field):
    model = mixerlab.create_model("u_identity_micro", img_size=16, in_chans=1, num_classes=10)
    with pytest.raises(ConfigError, match=field):
        erf(model, bundle(16), **kwargs)


def test_too_few_images_is_refused():
    with pytest.raises(ConfigError, match="num_images=9"):
        erf(mixerlab.create_model("u_identity_micro", img_size=16, in_chans=1, num_classes=10), bundle(16, n=8),
            num_images=9)


@needs_fmnist
def test_record_on_fashion_mnist_and_cli(tmp_path):
    rec = erf("u_convnext_micro", num_images=6, img_size=32, in_chans=1, num_classes=10)
    assert isinstance(rec, ERFRecord) and rec.num_images == 6 and rec.input_size == [1, 32, 32]
    assert rec.data["name"] == "fashion-mnist" and rec.data["eval_subset"] == 6
    assert [st.grid for st in rec.stages] == [[8, 8], [4, 4], [2, 2], [1, 1]]
    d = json.loads(json.dumps(rec.to_dict()))
    assert set(d["stages"][0]["side_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    assert len(d["stages"][0]["map"]) == 32 and max(max(r) for r in d["stages"][0]["map"]) == 1.0
    assert isinstance(rec.figures["heatmaps"], Figure)

    assert cli.main(["analyze", "erf", "--model", "u_identity_micro", "--img-size", "32", "--in-chans", "1",
                     "--num-images", "3", "--stages", "0", "3", "--out", str(tmp_path), "--format", "json"]) == 0
    out = json.loads((tmp_path / "erf.json").read_text())
    assert out["num_images"] == 3 and [s["index"] for s in out["stages"]] == [0, 3]
    assert out["source"]["model"] == "u_identity_micro"
    assert (tmp_path / "erf_heatmaps.png").stat().st_size > 0


@needs_fmnist
def test_a_run_directory_brings_its_weights_and_its_data(tmp_path):
    train(tiny(tmp_path / "run", epochs=1, eval_subset=32))
    rec = erf(tmp_path / "run", num_images=4)
    assert rec.source["kind"] == "run" and rec.source["trained"] is True
    assert rec.input_size == [1, 16, 16] and rec.data["img_size"] == 16 and rec.data["eval_subset"] == 4
    assert cli.main(["analyze", "erf", "--run", str(tmp_path / "run"), "--num-images", "2", "--out",
                     str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "erf.json").read_text())["source"]["run_dir"] == str(tmp_path / "run")
