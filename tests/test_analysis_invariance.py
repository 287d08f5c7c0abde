"""Invariance analysis (SPEC 8.6): the transforms, the metrics and models whose invariance is known."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from matplotlib.figure import Figure
from torch import nn
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.functional import rotate as tv_rotate

import mixerlab
from mixerlab import cli
from mixerlab.analysis import invariance as inv
from mixerlab.analysis.invariance import DIRECTIONS, default_shifts, invariance, rescale, rotate, shift
from mixerlab.data import DataBundle, InMemoryImages
from mixerlab.errors import ConfigError
from mixerlab.train import train
from tiny_runs import needs_fmnist, tiny


def bundle(size: int = 16, n: int = 12, chans: int = 1) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, chans, size, size), generator=g, dtype=torch.uint8)
    mean, std = (0.3,) * chans, (0.4,) * chans
    ds = InMemoryImages(images, torch.arange(n) % 10, img_size=size, in_chans=chans, mean=mean, std=std)
    return DataBundle(ds, ds, 10, mean, std)


class PixelPool(nn.Module):
    """A per-pixel MLP then a global average: invariant to circular shifts of the input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pixel = nn.Sequential(nn.Conv2d(1, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pixel(x.double()).mean((2, 3)))


@pytest.fixture(scope="module")
def toy() -> nn.Module:
    return PixelPool().double()


# ---- transforms ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_shift_moves_the_window_in_each_of_the_8_directions(name):
    dy, dx = DIRECTIONS[name]
    u = torch.zeros(1, 1, 9, 9)
    u[0, 0, 4, 4] = 1.0
    for mode in ("pad", "circular"):
        out = shift(u, 3 * dy, 3 * dx, mode)
        assert out.shape == u.shape
        assert out.flatten().argmax().item() == (4 - 3 * dy) * 9 + (4 - 3 * dx)  # content moves the other way
        assert shift(u, 0, 0, mode) is u
    edge = torch.zeros(1, 1, 9, 9)
    edge[0, 0, 8 if dy < 0 else 0, 8 if dx < 0 else 0] = 1.0  # leaves the window when it moves by (dy, dx)
    if dy or dx:
        assert shift(edge, dy, dx, "pad").sum() == 0
        assert shift(edge, dy, dx, "circular").sum() == 1


def test_rotate_is_counter_clockwise_like_torchvision():
    u = torch.zeros(1, 1, 17, 17)
    u[0, 0, 8, 13] = 1.0  # right of the centre
    assert divmod(rotate(u, 90).flatten().argmax().item(), 17) == (3, 8)  # now above it
    assert divmod(tv_rotate(u, 90, interpolation=InterpolationMode.BILINEAR).flatten().argmax().item(), 17) == (3, 8)
    v = torch.rand(2, 3, 16, 12)
    torch.testing.assert_close(rotate(v, 180), v.flip(-1, -2), atol=1e-5, rtol=0)
    assert rotate(v, 0) is v and rotate(v, 360) is v
    assert rotate(v, 37).min() >= 0 and rotate(v, 37).max() <= 1 and rotate(v, 45)[..., 0, 0].eq(0).all()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.875, 1.125, 1.5, 2.0])
def test_rescale_is_torchvision_resize_then_center_crop(ratio):
    x = torch.rand(2, 1, 32, 32)
    n = int(32 / ratio)
    ref = T.CenterCrop(32)(T.Resize(n, interpolation=InterpolationMode.BICUBIC, antialias=True)(x).clamp(0, 1))
    torch.testing.assert_close(rescale(x, ratio), ref, atol=1e-6, rtol=0)
    assert rescale(x, 1.0) is x


def test_default_sweeps_scale_the_reference_to_the_input_size():
    assert default_shifts(224) == list(range(0, 65, 4))
    assert default_shifts(32) == list(range(10))
    assert inv.DEFAULT_ANGLES == tuple(range(0, 91, 5))
    assert 1.0 in inv.DEFAULT_SCALES and min(inv.DEFAULT_SCALES) == 0.25 and max(inv.DEFAULT_SCALES) == 2.0


# ---- the analysis ------------------------------------------------------------------------------------

def test_identity_settings_are_100_percent_consistent():
    model = mixerlab.create_model("u_identity_micro", img_size=16, in_chans=1, num_classes=10)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    rec = invariance(model, bundle(), shifts=[0, 3], angles=[0, 30], scales=[1.0, 0.5], num_images=12, batch_size=5)
    assert rec.num_images == 12
    # per batch: the reference and the 10 non-identity settings (8 directions of shift 3, 30 degrees, ratio
    # 0.5); the 3 identity settings reuse the reference's logits
    assert seen == [5] * 11 + [5] * 11 + [2] * 11
    for row in (rec.translation[0], rec.rotation[0], rec.scale[0]):
        assert row["consistency"] == 100.0 and row["top1"] == rec.top1, row
    assert rec.scale[-1]["ratio"] == 0.5 and rec.scale[0]["ratio"] == 1.0
    assert set(rec.translation[1]["directions"]) == set(DIRECTIONS)  # all 8 directions evaluated
    assert rec.translation[0]["directions"].keys() == {"down"}  # shift 0 once
    assert model.training  # mode restored
    assert isinstance(rec.figures["curves"], Figure)
    json.dumps(rec.to_dict())


def test_circular_shift_invariant_model_is_100_percent_consistent_under_circular_shifts(toy):
    data = bundle()
    circ = invariance(toy, data, shifts=[1, 5, 11], angles=[], scales=[], num_images=12, shift_mode="circular")
    assert [r["consistency"] for r in circ.translation] == [100.0] * 3
    assert all(c == 100.0 for r in circ.translation for c in r["directions"].values())
    # soft CE at every shift is the entropy of the untransformed prediction, computed here independently
    x = torch.stack([data.eval[i][0] for i in range(12)])
    p = F.softmax(toy(x), -1)
    entropy = -(p * p.log()).sum(-1).mean().item()
    assert all(r["soft_ce"] == pytest.approx(entropy, rel=1e-9) for r in circ.translation)
    assert circ.rotation == [] and circ.scale == []
    # zero-filled shifts lose pixels: the same model is no longer exactly invariant
    padded = invariance(toy, data, shifts=[5], angles=[], scales=[], num_images=12, shift_mode="pad")
    assert padded.translation[0]["soft_ce"] > entropy + 1e-6


def test_consistency_and_top1_are_counted_per_prediction():
    class Constant(nn.Module):  # class 3 on the exact untransformed image, class 4 once any bit changes
        def __init__(self, ref: torch.Tensor) -> None:
            super().__init__()
            self.ref = ref
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            same = (x == self.ref[:x.shape[0]]).flatten(1).all(1)  # bit for bit
            logits = torch.zeros(x.shape[0], 10)
            logits[same, 3] = 1.0
            logits[~same, 4] = 1.0
            return logits

    data = bundle(n=10)  # labels 0..9: one image of class 3, one of class 4
    ref = torch.stack([data.eval[i][0] for i in range(10)])
    rec = invariance(Constant(ref), data, shifts=[0, 2], angles=[], scales=[], num_images=10, batch_size=10)
    assert rec.top1 == 10.0 and rec.translation[0]["consistency"] == 100.0
    assert rec.translation[1]["consistency"] == 0.0 and rec.translation[1]["top1"] == 10.0


@pytest.mark.parametrize("kwargs, field", [
    ({"shifts": [16]}, "shifts"), ({"shifts": [-1]}, "shifts"), ({"angles": [float("nan")]}, "angles"),
    ({"scales": [0.0]}, "scales"), ({"shift_mode": "reflect"}, "shift_mode"), ({"num_images": 0}, "num_images")])
def test_bad_sweeps_are_refused_before_any_image_is_read(kwargs, field, toy, monkeypatch):
    def no_images(*_a, **_k):
        raise AssertionError("images were read before the arguments were checked")

    monkeypatch.setattr(inv, "eval_images", no_images)
    with pytest.raises(ConfigError, match=field):
        invariance(toy, bundle(), **kwargs)


def test_model_without_config_needs_data(toy):
    with pytest.raises(ConfigError, match="data=None"):
        invariance(toy)


@needs_fmnist
def test_fashion_mnist_and_cli(tmp_path):
    assert cli.main(["analyze", "invariance", "--model", "u_identity_micro", "--img-size", "32", "--in-chans", "1",
                     "--num-classes", "10", "--num-images", "20", "--shifts", "0", "4", "--angles", "0", "45",
                     "--scales", "1", "0.5", "--out", str(tmp_path), "--format", "json"]) == 0
    out = json.loads((tmp_path / "invariance.json").read_text())
    assert out["num_images"] == 20 and out["data"]["name"] == "fashion-mnist" and out["data"]["eval_subset"] == 20
    assert [r["shift"] for r in out["translation"]] == [0, 4] and out["translation"][0]["consistency"] == 100.0
    assert [r["angle"] for r in out["rotation"]] == [0.0, 45.0] and out["source"]["model"] == "u_identity_micro"
    assert (tmp_path / "invariance_curves.png").stat().st_size > 0


@needs_fmnist
def test_a_run_directory_brings_its_weights_and_its_data(tmp_path):
    train(tiny(tmp_path / "run", epochs=1, eval_subset=32))
    rec = invariance(tmp_path / "run", shifts=[0, 2], angles=[0], scales=[1.0], num_images=8)
    assert rec.source["kind"] == "run" and rec.input_size == [1, 16, 16] and rec.data["eval_subset"] == 8
    assert [r["consistency"] for r in (rec.translation[0], rec.rotation[0], rec.scale[0])] == [100.0] * 3
