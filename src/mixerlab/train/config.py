"""The training recipe: one plain, validated :class:`TrainConfig` (model + data + optimisation + run control).

A recipe is built from three layers, later ones winning: the dataclass defaults (the small-grey recipe, see
``recipes/small_grey.yaml``), a YAML file, and explicit overrides (CLI flags). ``validate`` rejects every value
that cannot work *before* data is read or a model is built, naming the field, the value and what is allowed;
``check_runtime`` adds the checks that need the device and the world size.

Learning rate at optimiser step t (T steps in total, W warm-up steps, timm's cosine scheduler, per-step):
``lr_t = warmup_lr + (lr - warmup_lr) t / W`` for t < W, then ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2``.
``batch_size`` is the *global* batch per optimiser step: each of the ``world_size`` ranks sees
``batch_size / (world_size * accum_steps)`` images per forward.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DataConfig
from ..errors import ConfigError, check_choice, check_int, check_keys, check_number, fail, stable_hash

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "none")
AMP = ("none", "bf16", "fp16")
CLIP_MODES = ("norm", "value", "agc")
# Fields that steer one invocation, not the experiment: excluded from the config hash. log_every_steps is here
# too: the per-step log only observes the run (it reads the step's loss and lr, draws no random numbers), so
# two runs that differ only in it are the same experiment with the same outcome.
RUN_CONTROL = ("resume", "overwrite", "progress", "tensorboard", "num_workers", "run_dir", "log_every_steps")


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the small-grey recipe (Fashion-MNIST, 32x32, 1 channel).

    Weight decay never applies to 1-D parameters (norm weights, biases). ``decay_tables`` decides the tables a
    model lists in ``no_weight_decay()``: False (the SPEC default, as timm and DeiT) leaves position tables
    (``pos_embed``), class tokens and relative-position tables undecayed; True is STM-Evaluation's choice, whose
    PVT decays ``pos_embed`` and whose Halo decays its relative tables: position and relative-position tables
    are decayed like weights (class tokens still are not).
    """

    model: str = "u_convnext_micro"
    model_args: dict[str, Any] = field(default_factory=dict)  # model config overrides or mixer args
    drop_path: float | None = 0.0  # None: the named model's own rate
    data: DataConfig = field(default_factory=lambda: DataConfig(augment="none"))
    run_dir: str | None = None  # default: runs/<model>-<data>-s<seed>
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    accum_steps: int = 1
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    decay_tables: bool = False  # True: position / relative-position tables get weight decay (STM-Evaluation)
    momentum: float = 0.9
    opt_eps: float | None = None
    opt_betas: list[float] | None = None
    sched: str = "cosine"
    warmup_epochs: int = 1
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    decay_epochs: int = 30  # step scheduler
    decay_milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # multistep scheduler
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    clip_grad: float | None = 5.0
    clip_mode: str = "norm"
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: bool = False
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    device: str = "auto"
    sync_bn: bool | None = None  # None: on when world size > 1 on CUDA (torch has no CPU SyncBatchNorm)
    eval_every: int = 1
    ckpt_every_steps: int = 0  # 0: checkpoint at epoch ends only
    log_every_steps: int = 0  # > 0: append a row to <run_dir>/steps.jsonl every that many optimiser steps
    tensorboard: bool = False
    progress: bool | None = None  # None: a tqdm bar when stderr is a terminal
    resume: bool = False
    overwrite: bool = False

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        check_keys(cls, d, "recipe keys")
        data = d.pop("data", None)
        if isinstance(data, dict):
            check_keys(DataConfig, data, "recipe keys data.*")
            # Fields a recipe or flag leaves out come from the recipe's data defaults, not DataConfig's.
            data = dataclasses.replace(cls().data, **{k: tuple(v) if k in ("mean", "std") and v is not None else v
                                                      for k, v in data.items()})
        return cls(**d, **({"data": data} if data is not None else {}))

    @classmethod
    def from_sources(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Defaults <- YAML recipe at ``path`` <- ``overrides`` (keys ``data.<field>`` reach the data config)."""
        d: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config={str(path)!r} is invalid: no such file")
            with open(p) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config={str(path)!r} is invalid: the YAML must be a mapping of recipe keys")
            d = loaded
        d = {**d, "data": dict(d.get("data") or {})}
        for key, value in (overrides or {}).items():
            if key.startswith("data."):
                d["data"][key[5:]] = value
            elif key == "model_args":
                d["model_args"] = {**(d.get("model_args") or {}), **value}
            else:
                d[key] = value
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / f"{self.model}-{self.data.name}-s{self.seed}"

    def model_overrides(self, num_classes: int) -> dict[str, Any]:
        """Keyword overrides for ``mixerlab.create_model``: data geometry, classes, drop-path, then model_args."""
        out: dict[str, Any] = {"img_size": self.data.img_size, "in_chans": self.data.in_chans,
                               "num_classes": num_classes}
        if self.drop_path is not None:
            out["drop_path"] = self.drop_path
        return {**out, **self.model_args}

    def hash(self) -> str:
        """Hash of the experiment (run-control fields excluded), via :func:`mixerlab.errors.stable_hash`: equal
        configs hash equal whether a sequence is a tuple or a list, and a value JSON cannot hold is an error."""
        return stable_hash({k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL})

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for any value that cannot work; cheap (no data, no model)."""
        import timm.optim

        from ..zoo import list_models, model_config

        if self.model not in list_models():
            raise ConfigError(f"model={self.model!r} is unknown: allowed values are {list_models()}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args={self.model_args!r} is invalid: a mapping of model overrides")
        self.data.validate()
        if self.drop_path is not None and not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"drop_path={self.drop_path!r} is invalid: a rate in [0, 1), or null for the "
                              "model's own rate")
        model_config(self.model, **self.model_overrides(num_classes=10))  # geometry and mixer args
        for name in ("epochs", "batch_size", "eval_batch_size", "accum_steps", "eval_every", "decay_epochs"):
            check_int(name, getattr(self, name))
        for name in ("warmup_epochs", "seed", "num_workers", "ckpt_every_steps", "log_every_steps"):
            check_int(name, getattr(self, name), minimum=0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs!r} is invalid: at most epochs={self.epochs}")
        check_choice("opt", self.opt.lower(), timm.optim.list_optimizers())
        check_choice("sched", self.sched, SCHEDULERS)
        check_choice("amp", self.amp, AMP)
        check_choice("clip_mode", self.clip_mode, CLIP_MODES)
        if not isinstance(self.decay_tables, bool):
            fail("decay_tables", self.decay_tables, "true or false")
        positive = ["lr", "decay_rate"] + [n for n in ("opt_eps", "clip_grad") if getattr(self, n) is not None]
        for name in positive:
            check_number(name, getattr(self, name), 0.0, low_open=True)
        for name in ("weight_decay", "warmup_lr", "min_lr", "momentum", "mixup", "cutmix"):
            check_number(name, getattr(self, name), 0.0)
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr={self.min_lr!r} is invalid: at most lr={self.lr}")
        if self.opt_betas is not None and (len(self.opt_betas) not in (2, 3)
                                           or not all(0.0 <= b < 1.0 for b in self.opt_betas)):
            raise ConfigError(f"opt_betas={self.opt_betas!r} is invalid: null or 2-3 numbers in [0, 1)")
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0)
        for name in ("mixup_prob", "mixup_switch_prob"):
            check_number(name, getattr(self, name), 0.0, 1.0, high_open=False)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0, low_open=True)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device!r} is invalid: 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=True is invalid here: the tensorboard package is not installed "
                              "(pip install 'mixerlab[tensorboard]') - or leave it off")
        if self.resume and self.overwrite:
            raise ConfigError("resume=True and overwrite=True are invalid together: resume continues the run "
                              "in run_dir, overwrite deletes it; choose one")
        return self

    def check_runtime(self, device_type: str, world_size: int) -> None:
        """The checks that need the resolved device and the number of processes."""
        if self.amp == "fp16" and device_type != "cuda":
            raise ConfigError(f"amp='fp16' is invalid on device {device_type!r}: float16 training needs a CUDA "
                              "GPU (GradScaler); use amp='bf16' or 'none' on CPU")
        if self.compile and self.deterministic and device_type == "cuda":
            raise ConfigError("compile=True is invalid with deterministic=True on CUDA: inductor kernels are not "
                              "covered by torch's deterministic mode; turn one off")
        if self.sync_bn and world_size > 1 and device_type != "cuda":
            raise ConfigError(f"sync_bn=True is invalid on device {device_type!r}: torch's SyncBatchNorm runs on CUDA "
                              "only; leave it unset (per-rank BatchNorm statistics) or use a BatchNorm-free model")
        per = world_size * self.accum_steps
        if self.batch_size % per:
            raise ConfigError(f"batch_size={self.batch_size} is invalid: it must be divisible by world_size x "
                              f"accum_steps = {world_size} x {self.accum_steps} = {per}")
        if (self.mixup > 0 or self.cutmix > 0) and (self.batch_size // per) % 2:
            raise ConfigError(f"batch_size={self.batch_size} is invalid with mixup/cutmix: the per-forward batch "
                              f"{self.batch_size // per} must be even (timm's Mixup pairs samples)")

