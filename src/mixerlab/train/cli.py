"""``mixerlab train`` and ``mixerlab eval``.

``train``: the recipe is the defaults of :class:`TrainConfig` (the small-grey recipe), then ``--config
recipe.yaml``, then the flags given (a flag left out does not override the YAML). It calls
:func:`mixerlab.train.train` and exits 0 when the run completed, 3 when it diverged (non-finite loss),
2 for an invalid configuration or checkpoint, 1 for other failures. ``eval`` prints the JSON of
:func:`mixerlab.train.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import yaml

from ..data import DataConfig, DataError
from ..errors import ConfigError
from .checkpoint import CheckpointError

EXIT_DIVERGED = 3
EXIT_INVALID = 2
S = argparse.SUPPRESS


def parse_kv(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML-parsed value (``window_size=4``, ``depths=[1,1,1,1]``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


# flag -> (TrainConfig key, type, help); data.<field> keys reach the DataConfig.
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "named model (mixerlab.list_models())"),
    ("--drop-path", "drop_path", float, "stochastic depth rate"),
    ("--data", "data.name", str, "dataset: fashion-mnist, cifar10, cifar100, imagefolder"),
    ("--data-dir", "data.data_dir", str, "dataset directory"),
    ("--img-size", "data.img_size", int, "input side in pixels"),
    ("--in-chans", "data.in_chans", int, "input channels (1 or 3)"),
    ("--train-subset", "data.train_subset", int, "use a stratified subset of the train split"),
    ("--eval-subset", "data.eval_subset", int, "use a stratified subset of the eval split"),
    ("--augment", "data.augment", str, "none, light or randaug"),
    ("--random-erasing", "data.random_erasing", float, "random erasing probability"),
    ("--run-dir", "run_dir", str, "output directory (default runs/<model>-<data>-s<seed>)"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "global batch per optimiser step"),
    ("--eval-batch-size", "eval_batch_size", int, "batch per rank for evaluation"),
    ("--accum-steps", "accum_steps", int, "gradient accumulation steps"),
    ("--opt", "opt", str, "any optimiser of timm's factory (adamw, sgd, lamb, ...)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--weight-decay", "weight_decay", float, "weight decay (never on norms and biases; tables: --decay-tables)"),
    ("--momentum", "momentum", float, "momentum (SGD-like optimisers)"),
    ("--opt-eps", "opt_eps", float, "optimiser epsilon"),
    ("--sched", "sched", str, "cosine, tanh, step, multistep, poly or none"),
    ("--warmup-epochs", "warmup_epochs", int, "linear warm-up epochs"),
    ("--warmup-lr", "warmup_lr", float, "lr at the start of warm-up"),
    ("--min-lr", "min_lr", float, "final lr of the decay"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--mixup", "mixup", float, "mixup alpha (0: off)"),
    ("--cutmix", "cutmix", float, "cutmix alpha (0: off)"),
    ("--clip-grad", "clip_grad", float, "gradient clipping threshold"),
    ("--clip-mode", "clip_mode", str, "norm, value or agc"),
    ("--ema-decay", "ema_decay", float, "EMA decay"),
    ("--amp", "amp", str, "none, bf16 (CPU/GPU) or fp16 (GPU)"),
    ("--seed", "seed", int, "seed (rank r uses seed + r)"),
    ("--num-workers", "num_workers", int, "data loader workers per rank"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
    ("--eval-every", "eval_every", int, "evaluate every N epochs (and after the last)"),
    ("--ckpt-every-steps", "ckpt_every_steps", int, "also checkpoint every N optimiser steps (0: epochs only)"),
    ("--log-every-steps", "log_every_steps", int, "append loss/lr to <run_dir>/steps.jsonl every N steps (0: off)"),
]
SWITCHES = [("--decay-tables", "decay_tables", "weight decay on position and relative-position tables too "
                                                "(STM-Evaluation; default: not)"),
            ("--ema", "ema", "keep an EMA of the weights and evaluate it too"),
            ("--ema-warmup", "ema_warmup", "EMA decay warm-up"),
            ("--channels-last", "channels_last", "channels_last memory format"),
            ("--compile", "compile", "torch.compile the model"),
            ("--deterministic", "deterministic", "deterministic algorithms (repeatable runs)"),
            ("--tensorboard", "tensorboard", "TensorBoard scalars in <run_dir>/tb"),
            ("--resume", "resume", "continue the run in run_dir from its latest checkpoint"),
            ("--overwrite", "overwrite", "replace the run in run_dir")]


def configure_train(p: argparse.ArgumentParser) -> None:
    """Arguments of ``mixerlab train`` (flags default to 'not given', so they only override what is set)."""
    p.add_argument("--config", default=None, help="YAML recipe (e.g. recipes/small_grey.yaml)")
    for flag, key, typ, help_text in TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=S, help=help_text)
    for flag, key, help_text in SWITCHES:
        p.add_argument(flag, dest=key, action="store_true", default=S, help=help_text)
    p.add_argument("--out", dest="run_dir", type=str, default=S, help="same as --run-dir")
    p.add_argument("--model-arg", dest="model_args", type=parse_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="model override or mixer argument, repeatable (window_size=4, depths=[1,1,1,1])")
    p.add_argument("--opt-betas", dest="opt_betas", type=float, nargs="+", default=S, help="optimiser betas")
    p.add_argument("--sync-bn", dest="sync_bn", type=_bool, default=S,
                   help="SyncBatchNorm under DDP (default: on with CUDA)")
    p.add_argument("--progress", dest="progress", type=_bool, default=S, help="tqdm bars (default: when a TTY)")


def configure_eval(e: argparse.ArgumentParser) -> None:
    e.add_argument("--checkpoint", required=True, help="run dir, its checkpoints dir or a latest.json manifest")
    e.add_argument("--data", default=None, help="dataset (default: the one the run trained on)")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--img-size", type=int, default=None)
    e.add_argument("--eval-subset", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="auto")
    e.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    e.add_argument("--num-workers", type=int, default=0)


TRAIN_HELP = "train a model (single process, torchrun or srun)"
EVAL_HELP = "evaluate a checkpoint on a dataset's eval split"


def add_train_commands(subparsers: Any) -> None:
    """Register ``train`` and ``eval`` on an argparse subparsers object (each sets ``run``)."""
    configure_train(subparsers.add_parser("train", help=TRAIN_HELP, description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    subparsers.choices["train"].set_defaults(run=run_train)
    configure_eval(subparsers.add_parser("eval", help=EVAL_HELP))
    subparsers.choices["eval"].set_defaults(run=run_eval)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = {k for _, k, _, _ in TRAIN_FLAGS} | {k for _, k, _ in SWITCHES} | {
        "model_args", "opt_betas", "sync_bn", "progress"}
    out = {k: v for k, v in vars(args).items() if k in keys}
    if "model_args" in out:
        out["model_args"] = dict(out["model_args"])
    return out


def run_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .engine import train

    _logging()
    try:
        cfg = TrainConfig.from_sources(args.config, overrides_from_args(args))
        record = train(cfg)
    except (ConfigError, CheckpointError, DataError) as e:
        print(f"mixerlab train: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps({k: record.to_dict()[k] for k in ("status", "run_dir", "epochs_completed", "best_top1",
                                                       "final", "diverged_step", "last_finite_loss")}))
    return EXIT_DIVERGED if record.status == "diverged" else 0


def run_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate
    from .rundir import RunDir

    _logging()
    try:
        data = None
        if args.data or args.data_dir or args.img_size or args.eval_subset:
            base = RunDir.find(args.checkpoint).manifest()["data"]
            given = {"name": args.data, "data_dir": args.data_dir, "img_size": args.img_size,
                     "eval_subset": args.eval_subset}
            data = DataConfig(**{**base, "train_subset": None, **{k: v for k, v in given.items() if v is not None}})
        out = evaluate(args.checkpoint, data, batch_size=args.batch_size, device=args.device, amp=args.amp,
                       num_workers=args.num_workers)
    except (ConfigError, CheckpointError, DataError) as e:
        print(f"mixerlab eval: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(out))
    return 0


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m mixerlab.train.cli train ...``); ``mixerlab`` itself wires the same commands."""
    parser = argparse.ArgumentParser(prog="mixerlab")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
