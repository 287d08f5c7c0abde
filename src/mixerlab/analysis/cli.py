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
from .base import Record, save


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


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The common model options: ``--model`` (a fresh named model at ``--img-size`` / ``--in-chans`` /
    ``--num-classes``) or ``--run`` (a run written by ``mixerlab train``, its ``--weights``)."""
    p.add_argument("--model", default=None, help="registered model name (a fresh, untrained model)")
    p.add_argument("--run", default=None, help="run directory or checkpoint written by `mixerlab train`")
    p.add_argument("--weights", default="model", choices=("model", "ema"), help="which weights of --run")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)


def cli_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """What the options of :func:`add_model_options` name: a run directory, or a model name with the
    geometry overrides given."""
    if (args.model is None) == (args.run is None):
        raise ConfigError("--model NAME or --run DIR is required (exactly one)")
    if args.run is not None:
        return args.run, {}
    return args.model, {k: v for k, v in (("img_size", args.img_size), ("in_chans", args.in_chans),
                                          ("num_classes", args.num_classes)) if v is not None}


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for cmd in COMMANDS.values():
        a = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.needs_model:
            add_model_options(a)
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
