"""The training engine: recipe/config validation, determinism, divergence handling, accumulation, EMA, eval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mixerlab.config import ConfigError
from mixerlab.data import DataConfig
from mixerlab.train import TrainConfig, evaluate, train
from mixerlab.train.cli import EXIT_DIVERGED, main, overrides_from_args
from mixerlab.train.metrics import TIMING_KEYS

ROOT = Path(__file__).resolve().parents[1]
from tiny_runs import TINY_ARGS, tiny  # noqa: E402


def rows(run_dir: Path) -> list[dict]:
    out = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in out]


def test_recipe_file_is_the_default():
    assert TrainConfig.from_sources(ROOT / "recipes" / "small_grey.yaml") == TrainConfig()


@pytest.mark.parametrize(("change", "field", "allowed"), [
    ({"model": "u_nope"}, "model='u_nope'", "u_convnext_micro"),
    ({"opt": "adamz"}, "opt='adamz'", "adamw"),
    ({"sched": "cosinus"}, "sched='cosinus'", "cosine"),
    ({"lr": -1.0}, "lr=-1.0", "(0.0, inf)"),
    ({"epochs": 0}, "epochs=0", "positive integer"),
    ({"epochs": True}, "epochs=True", "positive integer"),
    ({"log_every_steps": -1}, "log_every_steps=-1", ">= 0"),
    ({"decay_tables": 1}, "decay_tables=1", "true or false"),
    ({"warmup_lr": "1e-6"}, "warmup_lr='1e-6'", "[0.0, inf)"),
    ({"ema_decay": 1.0}, "ema_decay=1.0", "(0.0, 1.0)"),
    ({"amp": "fp8"}, "amp='fp8'", "bf16"),
    ({"model": "u_swin_micro", "model_args": {"window_size": 0}}, "window_size=0", "positive"),
    ({"resume": True, "overwrite": True}, "resume=True", "choose one"),
])
def test_bad_config_names_field_and_allowed(change, field, allowed):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{**dataclasses.asdict(TrainConfig()), "data": DataConfig(), **change}).validate()
    assert field in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize(("field", "value"), [("img_size", True), ("in_chans", True), ("train_subset", False),
                                            ("seed", True)])
def test_data_config_refuses_booleans_as_integers(field, value):
    with pytest.raises(ConfigError, match=rf"data\.{field}={value} is invalid"):
        DataConfig(**{field: value}).validate()


def test_runtime_checks():
    with pytest.raises(ConfigError, match="amp='fp16' is invalid on device 'cpu'"):
        TrainConfig(amp="fp16").check_runtime("cpu", 1)
    with pytest.raises(ConfigError, match=r"batch_size=128 is invalid: .* 2 x 3 = 6"):
        TrainConfig(accum_steps=3).check_runtime("cpu", 2)
    with pytest.raises(ConfigError, match="sync_bn=True is invalid on device 'cpu'"):
        TrainConfig(sync_bn=True).check_runtime("cpu", 2)
    with pytest.raises(ConfigError, match="recipe keys"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_cli_flags_override_yaml():
    import argparse

    from mixerlab.train.cli import add_train_commands
    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(ROOT / "recipes" / "small_grey.yaml"), "--lr", "0.01",
                              "--model", "u_swin_micro", "--model-arg", "window_size=4", "--img-size", "64",
                              "--ema"])
    cfg = TrainConfig.from_sources(args.config, overrides_from_args(args))
    assert (cfg.lr, cfg.model, cfg.model_args, cfg.data.img_size, cfg.ema) == (0.01, "u_swin_micro",
                                                                               {"window_size": 4}, 64, True)
    assert cfg.weight_decay == 0.05 and cfg.data.name == "fashion-mnist"  # untouched: from the YAML


def test_cli_without_config_trains_the_default_recipe():
    """The issue's command (flags only, no --config) must train exactly the small-grey recipe."""
    import argparse

    from mixerlab.train.cli import add_train_commands
    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--model", "u_swin_micro", "--data", "fashion-mnist", "--img-size", "32",
                              "--in-chans", "1", "--epochs", "10", "--out", "runs/swin"])
    cfg = TrainConfig.from_sources(args.config, overrides_from_args(args))
    recipe = TrainConfig.from_sources(ROOT / "recipes" / "small_grey.yaml")
    assert cfg == dataclasses.replace(recipe, model="u_swin_micro", run_dir="runs/swin")


def undecayed(model_name: str, **kw) -> tuple[set[str], set[str]]:
    """(names without weight decay, names of params with ndim <= 1) in the optimiser built for ``model_name``."""
    from mixerlab import create_model
    from mixerlab.train.distributed import DistEnv
    from mixerlab.train.engine import _build_parts
    model = create_model(model_name, img_size=32, in_chans=1, num_classes=10)
    parts = _build_parts(TrainConfig(model=model_name, **kw), DistEnv(), torch.device("cpu"), model, 10, 10)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in parts.opt.param_groups) == len(names)
    no_decay = {names[id(p)] for g in parts.opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(g["weight_decay"] in (0, 0.05) for g in parts.opt.param_groups)
    return no_decay, {n for n, p in model.named_parameters() if p.ndim <= 1}


@pytest.mark.parametrize(("model", "tables"), [
    ("u_swin_micro", ("relative_position_bias_table",)), ("u_pvt_micro", ("pos_embed",)),
    ("u_halo_micro", ("rel_height", "rel_width")), ("vit_p_1gf", ("pos_embed",)),
])
def test_weight_decay_on_tables_is_a_recipe_choice(model, tables):
    spec, one_d = undecayed(model)  # SPEC default: no decay on 1-D params nor on any table
    table_names = {n for n in spec if any(t in n for t in tables)}
    assert table_names and spec == one_d | table_names | {n for n in spec if "cls_token" in n}
    stm, one_d = undecayed(model, decay_tables=True)  # STM-Evaluation: tables decayed, 1-D params still not
    assert stm == spec - table_names and one_d <= stm
    assert ("cls_token" in stm) == (model == "vit_p_1gf")  # a class token is not a position table


def test_deterministic_runs_repeat_and_seed_matters(tmp_path):
    a = train(tiny(tmp_path / "a"))
    b = train(tiny(tmp_path / "b"))
    train(tiny(tmp_path / "c", seed=1))
    assert a.status == b.status == "completed"
    ra, rb, rc = rows(tmp_path / "a"), rows(tmp_path / "b"), rows(tmp_path / "c")
    assert ra == rb and ra != rc
    assert {"train_loss", "lr", "eval_top1", "eval_top5", "eval_loss"} <= set(ra[-1])
    full = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert full["epoch_s"] > 0 and full["images_per_s"] > 0 and full["peak_mem_mb"] > 0
    rec = json.loads((tmp_path / "a" / "record.json").read_text())
    assert rec["status"] == "completed" and len(rec["epoch_times"]) == 2 and rec["params"] > 0
    # the eval of the saved weights reproduces the last epoch's numbers
    ev = evaluate(tmp_path / "a", DataConfig(img_size=16, eval_subset=128), device="cpu")
    assert ev["eval_top1"] == ra[-1]["eval_top1"] and ev["eval_loss"] == pytest.approx(ra[-1]["eval_loss"])


def test_accumulation_matches_one_big_batch(tmp_path):
    # LayerNorm-only model (no BatchNorm head), no drop-path, no augmentation: the gradient of 2 micro-batches of
    # 16 divided by 2 equals the gradient of the batch of 32, so the runs agree up to float rounding.
    kw = dict(model_args={**TINY_ARGS, "head": "norm_pool"}, drop_path=0.0, epochs=1, warmup_epochs=0,
              data=DataConfig(img_size=16, train_subset=128, eval_subset=64, augment="none"))
    train(tiny(tmp_path / "one", **kw))
    train(tiny(tmp_path / "two", accum_steps=2, **kw))
    one, two = rows(tmp_path / "one")[-1], rows(tmp_path / "two")[-1]
    for k in ("train_loss", "eval_loss", "eval_top5"):
        assert one[k] == pytest.approx(two[k], rel=1e-4), k


def test_mixup_ema_bf16_sgd_run(tmp_path):
    rec = train(tiny(tmp_path / "r", epochs=1, warmup_epochs=0, mixup=0.8, cutmix=1.0, ema=True, ema_decay=0.9,
                     amp="bf16", opt="sgd", lr=0.05, channels_last=True))
    assert rec.status == "completed"
    last = rows(tmp_path / "r")[-1]
    assert 0 <= last["ema_eval_top1"] <= 100 and last["ema_eval_loss"] != last["eval_loss"]
    w = safetensors.torch.load_file(str(next((tmp_path / "r" / "checkpoints").glob("*.safetensors"))))
    assert any(k.startswith("ema.") for k in w)


def test_divergence_stops_cleanly(tmp_path, capsys):
    run_dir = tmp_path / "div"
    code = main(["train", "--model", "u_convnext_micro", "--model-arg", "depths=[1,1,1,1]",
                 "--model-arg", "dims=[8,16,16,16]", "--img-size", "16", "--train-subset", "192",
                 "--eval-subset", "64", "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0",
                 "--lr", "1e6", "--clip-grad", "1e9", "--ckpt-every-steps", "1", "--device", "cpu",
                 "--run-dir", str(run_dir)])
    assert code == EXIT_DIVERGED
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "diverged" and rec["diverged_step"] >= 1
    assert rec["last_finite_loss"] is None or rec["last_finite_loss"] < 1e30
    manifest = run_dir / "checkpoints" / "latest.json"
    if manifest.is_file():  # whatever was saved before the blow-up holds finite weights only
        m = json.loads(manifest.read_text())
        w = safetensors.torch.load_file(str(run_dir / "checkpoints" / m["weights"]))
        assert all(torch.isfinite(t).all() for t in w.values() if t.is_floating_point())
        assert m["global_step"] < rec["diverged_step"]
