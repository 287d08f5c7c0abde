"""The training engine: ``train(TrainConfig) -> RunRecord`` and ``evaluate(checkpoint, DataConfig) -> dict``.

One loop. Each optimiser step consumes ``accum_steps`` micro-batches of ``batch_size / (world * accum)``
images per rank; the loss of a micro-batch is the mean over its images (soft-target cross-entropy with
mixup/cutmix, else cross-entropy with label smoothing) and is divided by ``accum_steps`` before backward, so
the summed gradient equals the gradient of the mean loss over the global batch (DDP averages over ranks).
The step's loss, summed over ranks, decides divergence on every rank alike: a non-finite value stops the run
before the optimiser step, so no non-finite update is applied or saved.

Resumption is exact: the loader order is a function of (seed, epoch); a resumed epoch re-draws its first
``pos * accum_steps`` batches (discarded) and then restores the RNG states saved with the checkpoint, so the
remaining batches, augmentations, drop-path masks and mixup draws are the ones the uninterrupted run saw.
The run directory's files and their names are those of ``rundir.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from ..data import DataConfig, build_data, loader
from ..errors import ConfigError
from ..zoo import create_model
from .checkpoint import (
    Checkpoint,
    atomic_write,
    atomic_write_json,
    model_hash,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_to_all,
    init_distributed,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from .metrics import JsonlLog, MetricsLog, peak_memory_mb, topk_correct
from .rundir import RUN_FILES, CheckpointError, RunDir, RunRecord

log = logging.getLogger("mixerlab.train")
# The tables of a model's no_weight_decay() that decay_tables=True decays: absolute position embeddings and
# relative-position tables (Swin's bias table, Halo's rel_height / rel_width); class tokens stay undecayed.
POSITION_TABLES = ("*pos_embed*", "*relative_position*", "*rel_*")


@dataclass
class Position:
    """Where the run is; saved in every checkpoint. ``pos``: optimiser steps done in ``epoch``."""

    epoch: int = 0
    pos: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # sum over this epoch's images so far of the per-image mean loss
    seen: int = 0
    best_top1: float | None = None
    last_loss: float | None = None


@dataclass
class Parts:
    model: nn.Module  # the plain model: weights, EMA source, evaluation
    forward: nn.Module  # what training calls: the model, its DDP wrapper and/or compiled version
    ddp: DistributedDataParallel | None
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    loss_fn: nn.Module


# ---- public API ----------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> RunRecord:
    """Run (or resume) the training described by ``cfg``; see the module docstring."""
    cfg.validate()
    env = init_distributed(cfg.device)
    try:
        return _run(cfg, env)
    finally:
        cleanup(env)


def evaluate(checkpoint: str | Path, data: DataConfig | None = None, *, batch_size: int = 256,
             device: str = "auto", amp: str = "none", num_workers: int = 0,
             progress: bool | None = None) -> dict[str, Any]:
    """Top-1/top-5/loss of a checkpoint's model (and EMA) on ``data``'s eval split (default: the run's data).
    ``checkpoint``: a run dir, its checkpoints dir or its manifest; models come from :meth:`RunDir.load_model`."""
    run = RunDir.find(checkpoint)
    manifest = run.manifest()
    env = DistEnv()
    dev = resolve_device(device, env)
    model = run.load_model("model", dev)
    data = data or DataConfig(**{**manifest["data"], "train_subset": None})
    if data.in_chans != model.config.in_chans:
        raise ConfigError(f"data.in_chans={data.in_chans} is invalid for this checkpoint: its model takes "
                          f"in_chans={model.config.in_chans}")
    bundle = build_data(data)
    if bundle.num_classes != model.config.num_classes:
        raise ConfigError(f"data.name={data.name!r} has {bundle.num_classes} classes but the checkpoint's model "
                          f"predicts {model.config.num_classes}")
    show = _show_progress(progress, env)
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "model": manifest["model"],
                           "epoch": manifest["epoch"], "global_step": manifest["global_step"],
                           "num_eval": len(bundle.eval)}  # type: ignore[arg-type]
    models = {"": model, **({"ema_": run.load_model("ema", dev)} if manifest["has_ema"] else {})}
    for prefix, m in models.items():
        ev = evaluate_model(m, bundle.eval, batch_size, env, dev, amp, False, num_workers, show)
        out.update({f"{prefix}eval_{k}": v for k, v in ev.items()})
    return out


def evaluate_model(model: nn.Module, ds: Dataset, batch_size: int, env: DistEnv, device: torch.device, amp: str,
                   channels_last: bool, num_workers: int, show: bool) -> dict[str, float]:
    """Mean loss, top-1 and top-5 (%) over ``ds``; ranks take disjoint strided shards (no padding), sums are
    all-reduced, so every rank gets the exact full-split numbers."""
    shard = Subset(ds, range(env.rank, len(ds), env.world_size)) if env.distributed else ds  # type: ignore[arg-type]
    dl = loader(shard, batch_size, train=False, seed=0, num_workers=num_workers)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count
    with torch.inference_mode():
        for x, y in tqdm(dl, desc="eval", leave=False, disable=not show):
            x, y = _to_device(x, y, device, channels_last)
            with _autocast(device, amp):
                out = model(x)
            c1, c5 = topk_correct(out, y, (1, 5))
            sums += torch.stack([F.cross_entropy(out.float(), y, reduction="sum").double(), c1.double(),
                                 c5.double(), torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    model.train(was_training)
    loss, c1, c5, n = all_reduce_sum(sums, env).tolist()
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n}


# ---- the run -------------------------------------------------------------------------------------
def _run(cfg: TrainConfig, env: DistEnv) -> RunRecord:
    device = resolve_device(cfg.device, env)
    cfg.check_runtime(device.type, env.world_size)
    run = RunDir(cfg.resolved_run_dir())
    run_dir = run.root
    ckpt = _check_run_dir(run, cfg)  # every rank checks; nothing is written before all agree
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed + env.rank)
    bundle = build_data(cfg.data)
    model = create_model(cfg.model, **cfg.model_overrides(bundle.num_classes))
    mcfg = model.config.to_dict()
    mhash = model_hash(cfg.model, mcfg)
    if ckpt is not None and ckpt.manifest.get("model_config_hash") != mhash:
        raise CheckpointError(f"the checkpoint in {run_dir} is for model {ckpt.manifest.get('model')!r} with "
                              f"model config hash {ckpt.manifest.get('model_config_hash')}, but this run builds "
                              f"{cfg.model!r} with hash {mhash}: resume with the same model and model_args, or use "
                              "another run_dir")
    micro = cfg.batch_size // (env.world_size * cfg.accum_steps)
    steps = len(_train_loader(cfg, bundle.train, micro, env, 0)) // cfg.accum_steps
    if steps == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is invalid: larger than the train split "
                          f"({len(bundle.train)} images) allows for one step")  # type: ignore[arg-type]
    barrier(env)
    if env.is_main:
        _prepare_run_dir(run, cfg, fresh=ckpt is None)
    barrier(env)

    parts = _build_parts(cfg, env, device, model, bundle.num_classes, steps)
    pos = Position()
    saved_rng = None
    metrics = MetricsLog(run.metrics_path, env.is_main, run.tensorboard_dir if cfg.tensorboard else None)
    step_log = JsonlLog(run.steps_path, env.is_main)
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        pos, saved_rng = _restore(ckpt, parts, env)
        if env.is_main:  # drop what was logged after the checkpoint: the resumed run logs it again
            history = metrics.truncate(lambda r: r["epoch"] < pos.epoch)
            step_log.truncate(lambda r: r["global_step"] <= pos.global_step)
        log.info("resuming %s at epoch %d, step %d of the epoch (global step %d)", run_dir, pos.epoch, pos.pos,
                 pos.global_step)
    record = RunRecord("completed", str(run_dir), cfg.model, sum(p.numel() for p in model.parameters()),
                       cfg.epochs, world_size=env.world_size, device=str(device), data=bundle.describe(),
                       config=cfg.to_dict(), model_config=mcfg, model_config_hash=mhash,
                       train_config_hash=cfg.hash())
    meta = {"model": cfg.model, "model_config": mcfg, "model_config_hash": mhash,
            "train_config_hash": record.train_config_hash, "data": cfg.data.to_dict(),
            "world_size": env.world_size, "has_ema": parts.ema is not None}

    def save() -> None:
        rngs = gather_to_all(rng_state(device), env)
        if env.is_main:
            save_checkpoint(run.checkpoint_dir, _weights(parts), _state(parts, pos, rngs, env),
                            {**meta, "epoch": pos.epoch, "pos": pos.pos, "global_step": pos.global_step})
        barrier(env)

    show = _show_progress(cfg.progress, env)
    try:
        while pos.epoch < cfg.epochs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0, seen0 = time.perf_counter(), pos.seen
            lr = _train_epoch(cfg, parts, env, device, bundle.train, micro, steps, pos, saved_rng, save, show,
                              step_log)
            saved_rng = None
            if lr is None or not _finite_params(parts.model):
                record.status = "diverged"
                record.diverged_step = pos.global_step + 1 if lr is None else pos.global_step
                record.last_finite_loss = pos.last_loss
                log.warning("diverged at step %d (last finite loss %s): stopping without saving",
                            record.diverged_step, pos.last_loss)
                break
            row: dict[str, Any] = {"epoch": pos.epoch, "step": pos.global_step, "train_loss": pos.loss_sum / pos.seen,
                                   "lr": lr}
            if (pos.epoch + 1) % cfg.eval_every == 0 or pos.epoch + 1 == cfg.epochs:
                row.update(_eval_all(cfg, parts, bundle.eval, env, device, show))
                pos.best_top1 = max(pos.best_top1 or 0.0, row["eval_top1"])
            dt = time.perf_counter() - t0
            row.update({"epoch_s": dt, "images_per_s": (pos.seen - seen0) / dt, "peak_mem_mb": peak_memory_mb(device)})
            metrics.append(row)
            history.append(row)
            log.info("epoch %d: %s", pos.epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            pos.epoch, pos.pos, pos.loss_sum, pos.seen = pos.epoch + 1, 0, 0.0, 0
            save()
    except Exception as e:
        record.status, record.error = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        record.epochs_completed = pos.epoch
        record.global_step = pos.global_step
        record.best_top1 = pos.best_top1
        record.final = history[-1] if history else {}
        record.epoch_times = [r["epoch_s"] for r in history]
        if env.is_main:
            atomic_write_json(run.record_path, record.to_dict())
        metrics.close()
    return record


def _train_epoch(cfg: TrainConfig, parts: Parts, env: DistEnv, device: torch.device, ds: Dataset, micro: int,
                 steps: int, pos: Position, saved_rng: list[dict[str, Any]] | None, save: Callable[[], None],
                 show: bool, step_log: JsonlLog) -> float | None:
    """Run the rest of epoch ``pos.epoch``; return the last step's lr, or None when the loss became non-finite.
    Every ``log_every_steps`` optimiser steps a row goes to ``step_log`` (the non-finite step gets none: the
    log ends with the last finite losses, the record names the step that diverged)."""
    it = iter(_train_loader(cfg, ds, micro, env, pos.epoch))
    for _ in range(pos.pos * cfg.accum_steps):  # replay the batches a resumed epoch has already used
        next(it)
    if saved_rng is not None:
        set_rng_state(saved_rng[env.rank], device)
    parts.forward.train()
    lr = parts.opt.param_groups[0]["lr"]
    with tqdm(total=steps, initial=pos.pos, desc=f"epoch {pos.epoch}", leave=False, disable=not show) as bar:
        while pos.pos < steps:
            stats = sum(_forward_backward(cfg, parts, env, device, *next(it), last=m == cfg.accum_steps - 1)
                        for m in range(cfg.accum_steps))
            loss_sum, n = all_reduce_sum(stats, env).tolist()
            loss = loss_sum / n
            if not math.isfinite(loss):
                parts.opt.zero_grad(set_to_none=True)
                return None
            lr = parts.opt.param_groups[0]["lr"]
            _optimizer_step(cfg, parts)
            pos.pos, pos.global_step = pos.pos + 1, pos.global_step + 1
            pos.loss_sum, pos.seen, pos.last_loss = pos.loss_sum + loss_sum, pos.seen + int(n), loss
            if parts.sched is not None:
                parts.sched.step_update(num_updates=pos.global_step)
            if parts.ema is not None:
                parts.ema.update(parts.model, step=pos.global_step)
            if cfg.log_every_steps and pos.global_step % cfg.log_every_steps == 0:
                # every step consumes exactly batch_size images (drop_last; batch_size divides evenly)
                step_log.append({"epoch": pos.epoch, "step": pos.pos, "global_step": pos.global_step, "loss": loss,
                                 "lr": lr, "images_seen": pos.global_step * cfg.batch_size})
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if cfg.ckpt_every_steps and pos.global_step % cfg.ckpt_every_steps == 0 and pos.pos < steps:
                save()
    return lr


def _forward_backward(cfg: TrainConfig, parts: Parts, env: DistEnv, device: torch.device, x: torch.Tensor,
                      y: torch.Tensor, *, last: bool) -> torch.Tensor:
    """One micro-batch; returns ``[loss * n, n]`` (float64, on device). Gradients sync only on the last one."""
    x, y = _to_device(x, y, device, cfg.channels_last)
    target = y
    if parts.mixup is not None:
        x, target = parts.mixup(x, y)
    sync = contextlib.nullcontext() if parts.ddp is None or last else parts.ddp.no_sync()
    with sync:
        with _autocast(device, cfg.amp):
            loss = parts.loss_fn(parts.forward(x), target)
        scaled = loss / cfg.accum_steps
        (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
    n = torch.tensor(float(len(y)), dtype=torch.float64, device=device)
    return torch.stack([loss.detach().double() * n, n])


def _optimizer_step(cfg: TrainConfig, parts: Parts) -> None:
    if parts.scaler is not None and cfg.clip_grad is not None:
        parts.scaler.unscale_(parts.opt)  # clip the true gradients, not the scaled ones
    if cfg.clip_grad is not None:
        dispatch_clip_grad(parts.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
    if parts.scaler is not None:
        parts.scaler.step(parts.opt)
        parts.scaler.update()
    else:
        parts.opt.step()
    parts.opt.zero_grad(set_to_none=True)


def _eval_all(cfg: TrainConfig, parts: Parts, ds: Dataset, env: DistEnv, device: torch.device,
              show: bool) -> dict[str, float]:
    args = (ds, cfg.eval_batch_size, env, device, cfg.amp, cfg.channels_last, cfg.num_workers, show)
    out = {f"eval_{k}": v for k, v in evaluate_model(parts.model, *args).items()}
    if parts.ema is not None:
        out.update({f"ema_eval_{k}": v for k, v in evaluate_model(parts.ema.module, *args).items()})
    return out


# ---- setup helpers -------------------------------------------------------------------------------
def _check_run_dir(run: RunDir, cfg: TrainConfig) -> Checkpoint | None:
    """Refuse a fresh start over an existing run (unless overwrite); on resume, read and verify the checkpoint."""
    if cfg.resume:
        if run.has_checkpoint():
            return run.checkpoint(with_state=True)
        if run.holds_run():
            raise CheckpointError(f"resume=True is invalid: {run.root} holds a run but no checkpoint "
                                  f"({run.manifest_path}) to resume from; start over with overwrite=True")
        return None
    if run.holds_run() and not cfg.overwrite:
        raise ConfigError(f"run_dir={str(run.root)!r} already holds a run: pass resume=True (--resume) to continue "
                          "it, overwrite=True (--overwrite) to replace it, or choose another run_dir")
    return None


def _prepare_run_dir(run: RunDir, cfg: TrainConfig, fresh: bool) -> None:
    if fresh and cfg.overwrite:
        for name in RUN_FILES:
            p = run.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run.root.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(run.config_path, lambda f: f.write(text.encode()))


def _build_parts(cfg: TrainConfig, env: DistEnv, device: torch.device, model: nn.Module, num_classes: int,
                 steps: int) -> Parts:
    if env.distributed and device.type == "cuda" and cfg.sync_bn is not False:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN statistics over the global batch
    elif env.distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("BatchNorm under DDP without SyncBatchNorm (torch has it on CUDA only): batch statistics are "
                    "per rank, so results differ from one process with the same global batch")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt_kwargs: dict[str, Any] = {}
    if cfg.opt_eps is not None:
        opt_kwargs["eps"] = cfg.opt_eps
    if cfg.opt_betas is not None:
        opt_kwargs["betas"] = tuple(cfg.opt_betas)
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=no_decay_names(model, cfg))
    opt = create_optimizer_v2(groups, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                              **opt_kwargs)
    sched, _ = create_scheduler_v2(opt, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
                                   decay_milestones=cfg.decay_milestones, decay_rate=cfg.decay_rate,
                                   min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                   step_on_epochs=False, updates_per_epoch=steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing, num_classes=num_classes)
    loss_fn = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ddp = None
    forward: nn.Module = model
    if env.distributed:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        forward = ddp
    if cfg.compile:
        forward = torch.compile(forward)
    # After DDP has broadcast rank 0's weights, so that every rank's EMA starts from the same model.
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    return Parts(model, forward, ddp, opt, sched, scaler, ema, mixup, loss_fn)


def no_decay_names(model: nn.Module, cfg: TrainConfig) -> set[str]:
    """Parameters kept out of weight decay besides the 1-D ones (which timm's groups always exclude): the
    model's ``no_weight_decay()`` tables, less the position tables when ``cfg.decay_tables`` (STM-Evaluation)."""
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if cfg.decay_tables:
        names = {n for n in names if not any(fnmatch.fnmatch(n, p) for p in POSITION_TABLES)}
    return names


def _restore(ckpt: Checkpoint, parts: Parts, env: DistEnv) -> tuple[Position, list[dict[str, Any]] | None]:
    parts.model.load_state_dict(ckpt.model_weights("model."))
    if parts.ema is not None:
        ema_weights = ckpt.model_weights("ema.")
        if ema_weights:
            parts.ema.module.load_state_dict(ema_weights)
        else:
            log.warning("the checkpoint has no EMA weights: EMA restarts from the current weights")
            parts.ema.module.load_state_dict(parts.model.state_dict())
    st = ckpt.state
    parts.opt.load_state_dict(st["optimizer"])
    if parts.sched is not None and st["scheduler"]:
        parts.sched.load_state_dict(st["scheduler"])
    if parts.scaler is not None and st["scaler"]:
        parts.scaler.load_state_dict(st["scaler"])
    rngs = st["rng"]
    if len(rngs) != env.world_size:
        log.warning("the checkpoint was written by %d processes, this run has %d: RNG streams restart from the "
                    "seed, so the continuation is not bit-identical", len(rngs), env.world_size)
        rngs = None
    return Position(**st["position"]), rngs


def _weights(parts: Parts) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in parts.model.state_dict().items()}
    if parts.ema is not None:
        out.update({f"ema.{k}": v for k, v in parts.ema.module.state_dict().items()})
    return out


def _state(parts: Parts, pos: Position, rngs: list[dict[str, Any]], env: DistEnv) -> dict[str, Any]:
    return {"optimizer": parts.opt.state_dict(),
            "scheduler": parts.sched.state_dict() if parts.sched is not None else {},
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else {},
            "rng": rngs, "position": dataclasses.asdict(pos), "world_size": env.world_size}


def _train_loader(cfg: TrainConfig, ds: Dataset, micro: int, env: DistEnv, epoch: int) -> Any:
    return loader(ds, micro, train=True, seed=cfg.seed, epoch=epoch, num_workers=cfg.num_workers,
                  distributed=env.distributed, drop_last=True)


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _autocast(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _show_progress(progress: bool | None, env: DistEnv) -> bool:
    return env.is_main and (sys.stderr.isatty() if progress is None else progress)
