"""mixerlab.data: IDX / CIFAR / imagefolder reading and validation, subsets, transforms, loader determinism.

Everything runs on tiny fake datasets written to tmp_path (our own IDX writer, pickled CIFAR batches, PNGs made
with PIL), except one test that reads the real Fashion-MNIST from the Debian package.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixerlab.config import ConfigError
from mixerlab.data import DataConfig, DataError, build_data, loader, memory, read_idx, stratified_subset
from mixerlab.data import build as build_mod
from mixerlab.data.core import STATS

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _fresh_cache():
    build_mod._CACHE.clear()
    yield
    build_mod._CACHE.clear()


# ----------------------------------------------------------------------------------------------- writers
def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0) -> Path:
    """IDX writer (uint8 only), independent of the reader; ``cut`` drops bytes from the end (truncation)."""
    assert array.dtype == np.uint8
    if magic is None:
        magic = 0x0800 | array.ndim
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    raw = raw[:len(raw) - cut]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def fake_fmnist(d: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3 % 10).astype(np.uint8)}
    for name, arr in arrays.items():
        write_idx(d / (name + (".gz" if gz else "")), arr)
    return arrays


def fake_cifar10(root: Path, per_batch: int = 6) -> dict:
    rng = np.random.default_rng(1)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        (d / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        out[name] = (data, labels)
    names = [f"c{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return out


def fake_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 2, size=(24, 20)) -> Path:
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def fm_cfg(d: Path, **kw) -> DataConfig:
    return DataConfig(data_dir=str(d), **kw)


# ----------------------------------------------------------------------------------------------- fashion-mnist
@pytest.mark.parametrize("gz", [True, False])
def test_idx_exact_pixels_and_labels(tmp_path, gz):
    arrays = fake_fmnist(tmp_path, gz=gz)
    got = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert torch.equal(got, torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    # Through build_data at native size with mean 0 / std 1/255: x is the raw pixel value.
    b = build_data(fm_cfg(tmp_path, img_size=28, augment="none", mean=(0.0,), std=(1 / 255,)))
    for split, key, lab in ((b.train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                            (b.eval, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        for i in (0, 7, len(split) - 1):
            x, y = split[i]
            assert isinstance(y, int) and y == arrays[lab][i]
            torch.testing.assert_close(x[0], torch.from_numpy(arrays[key][i]).float(), atol=1e-3, rtol=0)
    assert b.num_classes == 10 and b.classes[0] == "T-shirt/top" and b.skipped == 0


def test_torchvision_layout_is_found(tmp_path):
    fake_fmnist(tmp_path / "FashionMNIST" / "raw")
    assert len(build_data(fm_cfg(tmp_path)).train) == 40


CORRUPTIONS = {
    # case -> (file to damage, how, text expected in the message)
    "wrong_magic": ("train-images-idx3-ubyte.gz", "magic", "magic"),
    "swapped": ("t10k-labels-idx1-ubyte.gz", "swap", "magic"),
    "truncated": ("t10k-images-idx3-ubyte.gz", "cut", "truncated"),
    "bad_gzip": ("train-labels-idx1-ubyte.gz", "gzip", "corrupt"),
    "count_mismatch": ("train-labels-idx1-ubyte.gz", "count", "labels but"),
    "label_range": ("t10k-labels-idx1-ubyte.gz", "range", r"outside \[0, 10\)"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_idx_corruptions_name_the_file(tmp_path, case):
    arrays = fake_fmnist(tmp_path)
    fname, how, text = CORRUPTIONS[case]
    path = tmp_path / fname
    arr = arrays[fname.removesuffix(".gz")]
    if how == "magic":
        write_idx(path, arr, magic=0x12345678)
    elif how == "swap":
        write_idx(path, arrays["t10k-images-idx3-ubyte"])
    elif how == "cut":
        write_idx(path, arr, cut=100)
    elif how == "gzip":
        path.write_bytes(path.read_bytes()[:-12])
    elif how == "count":
        write_idx(path, arr[:-1])
    else:
        bad = arr.copy()
        bad[3] = 10
        write_idx(path, bad)
    with pytest.raises(DataError, match=text) as info:
        build_data(fm_cfg(tmp_path))
    assert fname in str(info.value)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        build_data(fm_cfg(tmp_path))
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "train-images-idx3-ubyte," not in msg.split("missing")[1].split(" in ")[0]  # only the missing file


def test_download_fallback_only_when_allowed(tmp_path, monkeypatch):
    calls = []

    class FakeFashionMNIST:  # stands in for torchvision's downloader (no network here)
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            fake_fmnist(Path(root) / "FashionMNIST" / "raw")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    monkeypatch.delenv("MIXERLAB_DOWNLOAD", raising=False)
    with pytest.raises(DataError, match="download"):
        build_data(fm_cfg(tmp_path))
    assert calls == []
    monkeypatch.setenv("MIXERLAB_DOWNLOAD", "1")
    b = build_data(fm_cfg(tmp_path))
    assert len(b.train) == 40 and {c[1] for c in calls} == {True, False} and all(c[2] for c in calls)


# ----------------------------------------------------------------------------------------------- subsets
def test_stratified_subset_counts_and_determinism():
    labels = torch.arange(1000) % 10
    idx = stratified_subset(labels, 23, 10, seed=0)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert torch.equal(idx, stratified_subset(labels, 23, 10, seed=0))
    assert not torch.equal(idx, stratified_subset(labels, 23, 10, seed=1))
    assert idx.unique().numel() == 23
    # A class too small for its share hands the rest to the others (water-filling).
    labels = torch.tensor([0] * 50 + [1] * 1 + [2] * 50)
    idx = stratified_subset(labels, 30, 3, seed=5)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [15, 1, 14]
    with pytest.raises(ConfigError, match="only 101"):
        stratified_subset(labels, 102, 3, seed=0)


def test_build_with_subsets(tmp_path):
    fake_fmnist(tmp_path, n_train=200, n_test=50)
    cfg = fm_cfg(tmp_path, train_subset=25, eval_subset=10, seed=3, augment="none")
    b = build_data(cfg)
    ys = [b.train[i][1] for i in range(len(b.train))]
    assert len(ys) == 25 and np.bincount(ys, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert np.bincount([b.eval[i][1] for i in range(10)], minlength=10).tolist() == [1] * 10
    again = build_data(cfg)
    assert torch.equal(again.train.images, b.train.images)
    other = build_data(fm_cfg(tmp_path, train_subset=25, seed=4, augment="none"))
    assert not torch.equal(other.train.images, b.train.images)


# ----------------------------------------------------------------------------------------------- transforms
def test_grey_to_three_channels_and_resize_matches_pil(tmp_path):
    arrays = fake_fmnist(tmp_path)
    b = build_data(fm_cfg(tmp_path, img_size=20, in_chans=3, augment="none", mean=(0.0,), std=(1 / 255,)))
    x, _ = b.eval[4]
    assert x.shape == (3, 20, 20)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    # torch's antialiased bilinear is designed to match PIL's reducing resize: allow one grey level of rounding.
    ref = np.array(Image.fromarray(arrays["t10k-images-idx3-ubyte"][4]).resize((20, 20), Image.BILINEAR))
    assert (x[0] - torch.from_numpy(ref).float()).abs().max() <= 1.0 + 1e-3
    up = build_data(fm_cfg(tmp_path, img_size=32, augment="light"))
    assert up.train[0][0].shape == (1, 32, 32) and up.describe()["num_train"] == 40


def test_normalisation_uses_given_and_default_stats(tmp_path):
    d = tmp_path / "const"
    arrays = fake_fmnist(d, n_train=10, n_test=10)
    arrays["t10k-images-idx3-ubyte"][:] = 200
    write_idx(d / "t10k-images-idx3-ubyte.gz", arrays["t10k-images-idx3-ubyte"])
    b = build_data(fm_cfg(d, mean=(0.25,), std=(0.5,)))
    assert b.eval[0][0].mean().item() == pytest.approx((200 / 255 - 0.25) / 0.5, abs=1e-5)
    b3 = build_data(fm_cfg(d, in_chans=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0)))
    means = b3.eval[0][0].mean((1, 2))
    torch.testing.assert_close(means, torch.tensor([(200 / 255 - m) / s for m, s in
                                                    ((0.1, 0.5), (0.2, 0.25), (0.3, 1.0))]), atol=1e-5, rtol=0)
    default = build_data(fm_cfg(d, in_chans=3))
    assert default.mean == (0.2860,) * 3 and default.std == (0.3530,) * 3
    assert default.eval[0][0].mean().item() == pytest.approx((200 / 255 - 0.2860) / 0.3530, abs=1e-5)


def test_light_augment_is_a_padded_crop_or_its_mirror(tmp_path):
    arrays = fake_fmnist(tmp_path, n_train=64)
    b = build_data(fm_cfg(tmp_path, img_size=28, mean=(0.0,), std=(1 / 255,)))
    torch.manual_seed(0)
    batch = b.train.__getitems__(list(range(64)))
    p = 28 // 8
    flips = 0
    for i, (x, _) in enumerate(batch):
        padded = np.pad(arrays["train-images-idx3-ubyte"][i], p).astype(np.float32)
        u = x[0].round().numpy()
        matches = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for f in (0, 1)
                   if np.array_equal(u, (padded[dy:dy + 28, dx:dx + 28][:, ::-1] if f else
                                         padded[dy:dy + 28, dx:dx + 28]))]
        assert matches, f"sample {i} is not a crop of the zero-padded image"
        flips += matches[0][2]
    assert 10 < flips < 54  # flip with p = 0.5


def test_on_the_fly_resize_equals_cached(tmp_path, monkeypatch):
    fake_fmnist(tmp_path)
    cached = build_data(fm_cfg(tmp_path, img_size=20, augment="none"))
    build_mod._CACHE.clear()
    monkeypatch.setattr(memory, "RESIZE_CACHE_BYTES", 0)
    lazy = build_data(fm_cfg(tmp_path, img_size=20, augment="none"))
    assert lazy.train.images.shape[-1] == 28
    assert torch.equal(torch.stack([x for x, _ in lazy.train.__getitems__(list(range(40)))]),
                       torch.stack([x for x, _ in cached.train.__getitems__(list(range(40)))]))


def test_random_erasing_and_randaug(tmp_path):
    fake_fmnist(tmp_path, n_train=16)
    plain = build_data(fm_cfg(tmp_path, augment="light"))
    erased = build_data(fm_cfg(tmp_path, augment="light", random_erasing=1.0))
    torch.manual_seed(1)
    a = plain.train.__getitems__(list(range(16))).x
    torch.manual_seed(1)
    e = erased.train.__getitems__(list(range(16))).x
    changed = (a != e).flatten(1).float().mean(1)
    assert (changed > 0.01).all() and (changed < 0.9).all()  # every image has one erased box, not all of it
    ra = build_data(fm_cfg(tmp_path, augment="randaug", in_chans=3)).train.__getitems__(list(range(16)))
    assert ra.x.shape == (16, 3, 32, 32) and torch.isfinite(ra.x).all()
    assert torch.equal(ra.x[:, 0], ra.x[:, 2])  # RandAugment ran on the grey image, then it was repeated


# ----------------------------------------------------------------------------------------------- loader
def _epoch(dl) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*dl, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_loader_is_deterministic_given_seed_and_epoch(tmp_path):
    fake_fmnist(tmp_path, n_train=50)
    ds = build_data(fm_cfg(tmp_path)).train
    runs = []
    for seed, epoch in ((0, 0), (0, 0), (0, 1), (1, 0)):
        torch.manual_seed(123)  # augmentation draws from the global RNG when num_workers=0
        runs.append(_epoch(loader(ds, 16, train=True, seed=seed, epoch=epoch)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1]) and not torch.equal(runs[0][1], runs[3][1])
    assert runs[0][1].numel() == 48  # drop_last for training: 3 full batches of 16
    # set_epoch on a reused loader gives the same order as building it for that epoch (resumable).
    dl = loader(ds, 16, train=True, seed=0)
    dl.sampler.set_epoch(1)
    assert torch.equal(_epoch(dl)[1], runs[2][1])
    ev = _epoch(loader(ds, 16, train=False, seed=0))
    assert ev[1].tolist() == [i % 10 for i in range(50)]  # eval: sequential, nothing dropped
    assert len(loader(ds, 64, train=True, seed=0)) == 1  # fewer samples than a batch: keep the partial batch


def test_loader_workers_and_distributed(tmp_path):
    fake_fmnist(tmp_path, n_train=40)
    ds = build_data(fm_cfg(tmp_path)).train
    with_workers = [_epoch(loader(ds, 8, train=True, seed=2, epoch=1, num_workers=2)) for _ in range(2)]
    assert torch.equal(with_workers[0][0], with_workers[1][0])  # worker augmentation seeded by (seed, epoch)
    single = _epoch(loader(ds, 8, train=True, seed=2, epoch=1))
    assert torch.equal(single[1], with_workers[0][1])
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        dl = loader(ds, 8, train=True, seed=2, epoch=1, distributed=True)
        assert isinstance(dl.sampler, torch.utils.data.DistributedSampler) and dl.sampler.epoch == 1
        order = _epoch(dl)[1]
        assert torch.equal(order, _epoch(loader(ds, 8, train=True, seed=2, epoch=1, distributed=True))[1])
        assert not torch.equal(order, _epoch(loader(ds, 8, train=True, seed=2, epoch=2, distributed=True))[1])
        assert torch.equal(order, single[1])  # one rank: the same permutation as the single-process sampler
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- cifar
def test_cifar10_reads_pickles_and_validates(tmp_path):
    batches = fake_cifar10(tmp_path)
    b = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), in_chans=3, augment="none",
                              mean=(0.0,), std=(1 / 255,)))
    assert len(b.train) == 30 and len(b.eval) == 6 and b.classes[3] == "c3" and b.num_classes == 10
    data, labels = batches["data_batch_2"]
    x, y = b.train[6 + 1]
    assert y == labels[1]
    torch.testing.assert_close(x, torch.from_numpy(data[1].reshape(3, 32, 32)).float(), atol=1e-3, rtol=0)
    assert b.mean == (0.0,) * 3 and STATS["cifar10"][0][0] == 0.4914
    # RGB -> grey follows PIL's ITU-R 601-2 luma (to one grey level) and gets statistics from the data.
    g = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), augment="none", mean=(0.0,), std=(1 / 255,)))
    ref = np.array(Image.fromarray(data[1].reshape(3, 32, 32).transpose(1, 2, 0)).convert("L"))
    assert (g.train[7][0][0] - torch.from_numpy(ref).float()).abs().max() <= 1.0 + 1e-3
    gs = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), augment="none"))
    all_grey = torch.stack([g.train[i][0] for i in range(30)]) / 255
    assert gs.mean[0] == pytest.approx(all_grey.mean().item(), abs=1e-4)
    # Corrupt and missing files name the file.
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    build_mod._CACHE.clear()
    with pytest.raises(DataError, match="data_batch_3"):
        build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), in_chans=3))
    with pytest.raises(DataError, match=r"test_batch.*--data-dir"):
        build_data(DataConfig(name="cifar10", data_dir=str(tmp_path / "nothing"), in_chans=3))


def test_cifar_download_fallback(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake_download(root, train, download):
        assert download
        fake_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    b = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), in_chans=3, download=True))
    assert len(b.train) == 30 and b.source == str(tmp_path / "cifar-10-batches-py")


# ----------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_builds_with_timm_transforms(tmp_path):
    fake_folder(tmp_path)
    b = build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), img_size=16, in_chans=3,
                              augment="randaug", random_erasing=0.25))
    assert b.classes == ["ant", "bee", "cat"] and b.num_classes == 3 and len(b.train) == 6 and len(b.eval) == 6
    assert b.mean == STATS["imagefolder"][0]
    x, y = b.train[5]
    assert x.shape == (3, 16, 16) and y == 2
    # eval (timm, crop_pct 0.875): short side to floor(16 / 0.875) = 18 -> 24x20 becomes 21x18 (bicubic),
    # centre crop 16 (left 2, top 1), normalise. Rebuilt here with PIL alone.
    img = Image.open(tmp_path / "val" / "bee" / "1.png").convert("RGB").resize((21, 18), Image.BICUBIC)
    ref = torch.from_numpy(np.array(img.crop((2, 1, 18, 17)), dtype=np.float32) / 255)
    ref = (ref.permute(2, 0, 1) - torch.tensor(b.mean)[:, None, None]) / torch.tensor(b.std)[:, None, None]
    x, y = b.eval[3]
    assert y == 1
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    grey = build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), img_size=16, in_chans=1,
                                 train_subset=3, eval_subset=3))
    assert grey.train[0][0].shape == (1, 16, 16) and grey.mean == (0.449,) and len(grey.train) == 3
    assert sorted(grey.train[i][1] for i in range(3)) == [0, 1, 2]


def test_imagefolder_validation(tmp_path):
    root = fake_folder(tmp_path / "empty")
    for f in (root / "val" / "bee").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"val/bee"):
        build_data(DataConfig(name="imagefolder", data_dir=str(root), in_chans=3))
    root = fake_folder(tmp_path / "mismatch")
    (root / "val" / "cat").rename(root / "val" / "dog")
    with pytest.raises(DataError, match=r"only in train: \['cat'\], only in val: \['dog'\]"):
        build_data(DataConfig(name="imagefolder", data_dir=str(root), in_chans=3))
    with pytest.raises(ConfigError, match="data_dir"):
        build_data(DataConfig(name="imagefolder", in_chans=3))


def test_imagefolder_bad_image_fail_or_skip(tmp_path):
    root = fake_folder(tmp_path)
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 20)
    cfg = DataConfig(name="imagefolder", data_dir=str(root), img_size=16, in_chans=3)
    with pytest.raises(DataError, match=r"broken\.jpg") as info:
        build_data(cfg)
    assert "on_bad_image='skip'" in str(info.value)
    cfg.on_bad_image = "skip"
    b = build_data(cfg)
    assert b.skipped == 1 and len(b.train) == 6 and b.describe()["skipped_files"][0].endswith("broken.jpg")
    (root / "train" / "bee" / "broken.jpg").unlink()
    # verify() checks PNG chunk CRCs: a cut PNG is caught by the up-front scan.
    png = root / "val" / "ant" / "0.png"
    png.write_bytes(png.read_bytes()[:120])
    with pytest.raises(DataError, match=r"1 undecodable image.*0\.png"):
        build_data(DataConfig(name="imagefolder", data_dir=str(root), in_chans=3))
    png.unlink()
    # A JPEG cut after its header passes the quick scan; decoding it at load time fails loudly, naming it.
    jpg = root / "val" / "ant" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:-300])
    b = build_data(DataConfig(name="imagefolder", data_dir=str(root), in_chans=3))
    assert b.skipped == 0
    i = next(i for i, (p, _) in enumerate(b.eval.samples) if p.endswith("cut.jpg"))
    with pytest.raises(DataError, match=r"cut\.jpg.*pixel data is broken"):
        b.eval[i]


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("field", "value", "text"), [
    ("name", "mnist", "allowed values"), ("in_chans", 2, "in_chans"), ("augment", "heavy", "augment"),
    ("img_size", 0, "img_size"), ("train_subset", 0, "train_subset"), ("std", (0.0,), "std"),
    ("mean", (0.1, 0.2), "mean"), ("random_erasing", 1.5, "random_erasing"),
    ("on_bad_image", "skip", "whole-split"), ("on_bad_image", "ignore", "on_bad_image"),
])
def test_config_errors_name_the_field(field, value, text):
    with pytest.raises(ConfigError, match=text) as info:
        DataConfig(**{field: value}).validate()
    assert field in str(info.value) and repr(value) in str(info.value)


def test_real_fashion_mnist():
    if not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{REAL_FMNIST} absent: `make data` (apt-get install dataset-fashion-mnist) installs it")
    b = build_data(DataConfig(augment="none"))
    assert (len(b.train), len(b.eval), b.num_classes) == (60000, 10000, 10)
    assert torch.bincount(b.train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(b.eval.labels, minlength=10).tolist() == [1000] * 10
    # The default statistics are those of the raw 28x28 train pixels.
    raw = read_idx(REAL_FMNIST / "train-images-idx3-ubyte.gz").float() / 255
    assert raw.mean().item() == pytest.approx(STATS["fashion-mnist"][0][0], abs=1e-4)
    assert raw.std().item() == pytest.approx(STATS["fashion-mnist"][1][0], abs=1e-4)
    x, y = b.train[0]
    assert x.shape == (1, 32, 32) and y == 9  # the first training image is an ankle boot
