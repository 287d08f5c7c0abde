"""mixerlab bench (SPEC 8.2): record, CSV, paired alternating repetitions against a peer, refusals."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

import mixerlab
from mixerlab import cli
from mixerlab.analysis import bench
from mixerlab.analysis.bench import CSV_COLUMNS, BenchRecord, append_csv, benchmark
from mixerlab.errors import ConfigError

MICRO = {"img_size": 32, "in_chans": 1, "num_classes": 10, "batch_size": 2, "warmup": 2, "reps": 2}


@pytest.fixture(scope="module")
def with_peer() -> BenchRecord:
    return benchmark("u_identity_micro", peer="resnet10t", **MICRO, order="mixerlab-first")


@pytest.fixture(scope="module")
def balanced() -> BenchRecord:  # both orders, each in a spawned process
    return benchmark("u_identity_micro", peer="resnet10t", **{**MICRO, "reps": 3}, order="balanced")


def test_record_fields(with_peer):
    rec = benchmark("u_identity_micro", **{**MICRO, "reps": 3}, threads=1, channels_last=True)
    assert rec.peer is None and set(rec.results) == {"infer", "train"}
    for mode in ("infer", "train"):
        r = rec.results[mode]
        assert set(r) == {"mixerlab"}  # no peer, no ratio
        m = r["mixerlab"]
        assert len(m["times_ms"]) == 3 and m["ms_per_step"]["median"] == statistics.median(m["times_ms"])
        assert m["ms_per_step"]["min"] <= m["ms_per_step"]["q1"] <= m["ms_per_step"]["median"] <= m["ms_per_step"]["q3"]
        assert m["images_per_s"] == pytest.approx(2 * 1000 / m["ms_per_step"]["median"])
        assert m["peak_memory_mb"] >= 0 and m["first_step_ms"] > 0
    assert rec.settings["channels_last"] is True and rec.settings["precision"] == "fp32"
    assert rec.settings["img_size"] == 32 and rec.settings["batch_size"] == 2 and rec.settings["device"] == "cpu"
    assert rec.machine["threads"] == 1 and rec.machine["cores"] >= 1 and rec.machine["cpu"]
    assert rec.machine["torch"] == torch.__version__ and rec.machine["timm"]
    assert "RSS" in rec.memory_method or "ru_maxrss" in rec.memory_method
    assert rec.models["mixerlab"]["name"] == "u_identity_micro" and rec.models["mixerlab"]["params_m"] > 0
    json.dumps(rec.to_dict())


def test_a_model_object_is_measured_at_its_own_geometry_and_left_untouched():
    model = mixerlab.create_model("u_identity_micro", img_size=32, in_chans=1, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = benchmark(model, batch_size=2, warmup=2, reps=1, modes=("train",))
    s = rec.settings
    assert (s["img_size"], s["in_chans"], s["num_classes"]) == (32, 1, 10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the steps ran on a copy


def test_threads_are_restored():
    before = torch.get_num_threads()
    benchmark("u_identity_micro", **MICRO, threads=1, modes=("infer",))
    assert torch.get_num_threads() == before


def test_peer_gives_the_paired_ratio(with_peer):
    for mode in ("infer", "train"):
        r = with_peer.results[mode]
        paired = [p / m for m, p in zip(r["mixerlab"]["times_ms"], r["peer"]["times_ms"], strict=True)]
        assert r["ratio"]["median"] == pytest.approx(statistics.median(paired))
    assert with_peer.models["peer"]["name"] == "resnet10t" and with_peer.peer == "resnet10t"
    assert with_peer.settings["order"] == "mixerlab-first" and "by_order" not in with_peer.results["infer"]


def test_balanced_pools_both_orders_from_their_own_processes(balanced):
    assert balanced.settings["order"] == "balanced"
    for mode in ("infer", "train"):
        r = balanced.results[mode]
        first, second = r["by_order"]["mixerlab-first"], r["by_order"]["peer-first"]
        for k in ("mixerlab", "peer"):  # repetitions pooled, mixerlab-first process first
            assert r[k]["times_ms"] == first[k]["times_ms"] + second[k]["times_ms"] and len(r[k]["times_ms"]) == 6
            assert r[k]["ms_per_step"]["median"] == statistics.median(r[k]["times_ms"])
            assert r[k]["first_step_ms"] == first[k]["first_step_ms"]
        # each model's memory from the process where it was warmed up first
        assert r["mixerlab"]["peak_memory_mb"] == first["mixerlab"]["peak_memory_mb"]
        assert r["peer"]["peak_memory_mb"] == second["peer"]["peak_memory_mb"]
        paired = [p / m for m, p in zip(r["mixerlab"]["times_ms"], r["peer"]["times_ms"], strict=True)]
        assert r["ratio"]["median"] == pytest.approx(statistics.median(paired))
        for part in (first, second):
            own = [p / m for m, p in zip(part["mixerlab"]["times_ms"], part["peer"]["times_ms"], strict=True)]
            assert part["ratio"]["median"] == pytest.approx(statistics.median(own))
    json.dumps(balanced.to_dict())


def test_separate_builds_each_model_in_a_process_of_its_own(monkeypatch):
    def not_here(*_a, **_k):
        raise AssertionError("the peer was built in the driving process")

    monkeypatch.setattr(bench, "build_peer", not_here)  # the spawned processes import their own, unpatched
    rec = benchmark("u_identity_micro", peer="resnet10t", **MICRO, modes=("infer",))  # the default order
    r = rec.results["infer"]
    assert rec.settings["order"] == "separate" and set(r) == {"mixerlab", "peer", "ratio"}
    paired = [p / m for m, p in zip(r["mixerlab"]["times_ms"], r["peer"]["times_ms"], strict=True)]
    assert len(paired) == MICRO["reps"] and r["ratio"]["median"] == pytest.approx(statistics.median(paired))
    resnet = timm.create_model("resnet10t", in_chans=1, num_classes=10)
    assert rec.models["peer"]["params_m"] == pytest.approx(sum(p.numel() for p in resnet.parameters()) / 1e6)
    assert r["mixerlab"]["first_step_ms"] > 0 and r["peer"]["peak_memory_mb"] >= 0


class Probe(nn.Module):
    """A stand-in model with 10 logits that calls ``log(self)`` on every forward."""

    def __init__(self, tag: str, log: Callable[[Probe], None]) -> None:
        super().__init__()
        self.tag, self.log = tag, log
        self.fc = nn.Linear(1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log(self)
        return self.fc(x.mean((1, 2, 3))[:, None])


def test_repetitions_alternate_between_the_models(monkeypatch):
    calls: list[str] = []

    def log(m: Probe) -> None:
        calls.append(m.tag)

    monkeypatch.setattr(bench, "build_peer", lambda name, **_: Probe("timm", log))
    settings = {**MICRO, "warmup": 2, "reps": 3, "modes": ("infer",)}
    rec = benchmark(Probe("ml", log), peer="resnet10t", **settings, order="mixerlab-first")
    # warm-up one model at a time, then the timed repetitions alternate
    assert calls == ["ml", "ml", "timm", "timm", "ml", "timm", "timm", "ml", "ml", "timm"]  # warm-up, then ABBA
    assert "ratio" in rec.results["infer"]
    calls.clear()
    rec = benchmark(Probe("ml", log), peer="resnet10t", **settings, order="peer-first")
    assert calls == ["timm", "timm", "ml", "ml", "timm", "ml", "ml", "timm", "timm", "ml"]
    assert list(rec.results["infer"]) == ["mixerlab", "peer", "ratio"]


class FirstCallAllocates(nn.Module):
    """Stands for a compiled model: its first forward takes 256 MB (as compiling does), later ones nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.calls = nn.Linear(1, 10), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            torch.ones(2**26).sum()  # 256 MB written, then freed
        return self.fc(x.mean((1, 2, 3))[:, None])


def test_peak_memory_is_a_steady_steps_not_the_first():
    rec = benchmark(FirstCallAllocates(), **{**MICRO, "warmup": 3}, modes=("infer",))
    assert rec.results["infer"]["mixerlab"]["peak_memory_mb"] < 64


def test_best_mode_compiles_mixerlab_frozen_and_keeps_the_peer_eager(monkeypatch):
    seen: list[tuple[str, bool]] = []  # (model, inductor's freezing flag when it ran)

    def log(m: Probe) -> None:
        seen.append((m.tag, torch._inductor.config.freezing))

    class Compiled(nn.Module):  # stands for torch.compile's wrapper: tags the calls that went through it
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.m.tag = "compiled " + self.m.tag.removeprefix("compiled ")
            return self.m(x)

    monkeypatch.setattr(bench, "build_peer", lambda name, **_: Probe("timm", log))
    monkeypatch.setattr(torch, "compile", Compiled)
    rec = benchmark(Probe("ml", log), peer="resnet10t", **MICRO, modes=("infer",), compile=True, freeze=True,
                    peer_eager=True, order="mixerlab-first")
    assert set(seen) == {("compiled ml", True), ("timm", True)}
    assert not torch._inductor.config.freezing  # restored
    assert (rec.settings["compile"], rec.settings["freeze"], rec.settings["peer_compile"]) == (True, True, False)


def test_csv_appends_rows_with_settings(tmp_path, with_peer, balanced):
    path = tmp_path / "sub" / "results.csv"
    append_csv(with_peer, path)
    append_csv(balanced, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert path.read_text().count("timestamp,model") == 1  # one header
    assert [r["mode"] for r in rows] == ["infer", "train", "infer", "train"]
    r = rows[1]
    assert tuple(r) == CSV_COLUMNS
    assert (r["model"], r["peer"], r["img_size"], r["batch_size"], r["precision"], r["compile"], r["device"]) == \
        ("u_identity_micro", "resnet10t", "32", "2", "fp32", "False", "cpu")
    assert float(r["ratio_median"]) == pytest.approx(with_peer.results["train"]["ratio"]["median"], rel=1e-3)
    assert r["order"] == "mixerlab-first" and r["ratio_median_mixerlab_first"] == r["ratio_median"]
    assert r["ratio_median_peer_first"] == ""
    r = rows[3]
    by_order = balanced.results["train"]["by_order"]
    assert r["order"] == "balanced" and float(r["ratio_median"]) == pytest.approx(
        balanced.results["train"]["ratio"]["median"], rel=1e-3)
    assert float(r["ratio_median_mixerlab_first"]) == pytest.approx(by_order["mixerlab-first"]["ratio"]["median"],
                                                                    rel=1e-3)
    assert float(r["ratio_median_peer_first"]) == pytest.approx(by_order["peer-first"]["ratio"]["median"], rel=1e-3)
    assert r["torch"] == torch.__version__ and r["cpu"] and int(r["cores"]) >= 1 and r["memory_method"]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="csv="):
        append_csv(with_peer, other)


def test_fp16_on_cpu_is_refused_before_any_work(monkeypatch):
    def no_work(*_a, **_k):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr(bench, "resolve_model", no_work)
    with pytest.raises(ConfigError, match=r"precision='fp16' is invalid on device='cpu'.*\['bf16', 'fp32'\]"):
        benchmark("u_identity_micro", precision="fp16", device="cpu")


@pytest.mark.parametrize("kwargs, field", [
    ({"precision": "fp8"}, "precision"), ({"modes": ("infer", "eval")}, "modes"), ({"modes": ()}, "modes"),
    ({"reps": 0}, "reps"), ({"warmup": 1}, r"warmup=1 is invalid.*>= 2"), ({"batch_size": 0}, "batch_size"),
    ({"device": "tpu"}, "device"), ({"peer": "no_such_timm_model"}, "peer"), ({"img_size": 0}, "img_size"),
    ({"freeze": True, "modes": ("infer",)}, "freeze=True is invalid without compile"),
    ({"compile": True, "freeze": True}, r"freeze=True is invalid with modes=\['infer', 'train'\]"),
    ({"compile": True, "peer_eager": True}, "peer_eager"), ({"order": "timm-first"}, "order")])
def test_bad_settings_name_the_field(kwargs, field, monkeypatch):
    monkeypatch.setattr(bench, "resolve_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    with pytest.raises(ConfigError, match=field):
        benchmark("u_identity_micro", **kwargs)


def test_cli_prints_the_ratio_and_appends_the_csv(tmp_path, capsys):
    path = tmp_path / "r.csv"
    status = cli.main(["bench", "u_identity_micro", "--img-size", "32", "--in-chans", "1", "--num-classes", "10",
                       "--batch-size", "2", "--warmup", "2", "--reps", "2", "--modes", "infer",
                       "--peer", "resnet10t", "--order", "peer-first", "--csv", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "throughput mixerlab / timm =" in out and "resnet10t" in out and "order peer-first" in out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["mode"] == "infer" and rows[0]["ratio_median"]
    assert cli.main(["bench", "u_identity_micro", "--precision", "fp16"]) == 2  # a one-line error, exit 2
