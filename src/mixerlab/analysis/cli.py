"""``mixerlab analyze NAME ...``: one sub-command per analysis, all with the same shape.

Each analysis module registers an :class:`AnalysisCommand`: ``configure(parser)`` adds its own
options, ``run(args) -> Record`` calls the analysis function, ``table(record) -> str`` renders the
record for a terminal. Common options: ``--model NAME`` or ``--run DIR`` (a run written by
``mixerlab train``), ``--img-size`` / ``--in-chans`` / ``--num-classes`` for fresh models, ``--out DIR``
(writes ``<out>/<name>.json`` and the figures as PNG) and ``--format table|json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .base import Record, resolve_model, save


@dataclass(frozen=True)
class AnalysisCommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Record]
    table: Callable[[Record], str]
    needs_model: bool = True
    as_json: Callable[[Record], Any] | None = None  # what --format json prints (default: record.to_dict())


COMMANDS: dict[str, AnalysisCommand] = {}


def register(cmd: AnalysisCommand) -> None:
    if cmd.name in COMMANDS:
        raise ValueError(f"analysis name={cmd.name!r} is already registered")
    COMMANDS[cmd.name] = cmd


def model_from_args(args: argparse.Namespace, **extra: Any) -> tuple[Any, dict[str, Any]]:
    """The model the common options name (a fresh named model at the given geometry, or a trained run)."""
    if (args.model is None) == (args.run is None):
        raise ConfigError("--model NAME or --run DIR is required (exactly one)")
    if args.run is not None:
        return resolve_model(args.run, which=args.weights)
    geometry = {k: v for k, v in (("img_size", args.img_size), ("in_chans", args.in_chans),
                                  ("num_classes", args.num_classes)) if v is not None}
    return resolve_model(args.model, **geometry, **extra)


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for cmd in COMMANDS.values():
        a = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.needs_model:
            a.add_argument("--model", default=None, help="registered model name (a fresh, untrained model)")
            a.add_argument("--run", default=None, help="run directory or checkpoint written by `mixerlab train`")
            a.add_argument("--weights", default="model", choices=("model", "ema"), help="which weights of --run")
            a.add_argument("--img-size", type=int, default=None)
            a.add_argument("--in-chans", type=int, default=None)
            a.add_argument("--num-classes", type=int, default=None)
        a.add_argument("--out", default=None, help="directory for <analysis>.json and its figures (PNG)")
        a.add_argument("--format", default="table", choices=("table", "json"))
        cmd.configure(a)


def run(args: argparse.Namespace) -> int:
    cmd = COMMANDS[args.analysis]
    record = cmd.run(args)
    if args.out is not None:
        save(record, args.out, cmd.name)
    if args.format == "json":
        print(json.dumps(cmd.as_json(record) if cmd.as_json else record.to_dict(), indent=2))
    else:
        print(cmd.table(record))
    return 0
