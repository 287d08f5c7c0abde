"""The ``mixerlab`` command: thin subcommands that parse arguments, call the Python API and print.

    mixerlab models [PATTERN] [--img-size N] [--in-chans N] [--format table|json|csv]

Subcommands live in one registry so that other packages plug theirs in with one call::

    add_subcommand("train", "train a model", configure=add_train_args, run=run_train)

``configure(parser)`` adds the subcommand's arguments to its ``argparse`` sub-parser;
``run(args)`` does the work and returns an exit status (None means 0). A
:class:`~mixerlab.config.ConfigError` raised by ``run`` is printed as a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .complexity import complexity
from .errors import ConfigError
from .zoo import list_models, model_config

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Configure
    run: Run


SUBCOMMANDS: dict[str, Subcommand] = {}


def add_subcommand(name: str, help: str, configure: Configure, run: Run) -> None:
    """Register ``mixerlab NAME``; see the module docstring."""
    if name in SUBCOMMANDS:
        raise ValueError(f"subcommand name={name!r} is already registered: pick another name")
    SUBCOMMANDS[name] = Subcommand(name, help, configure, run)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(prog="mixerlab", description="Build, measure and compare spatial token mixers.")
    parser.add_argument("--version", action="version", version=f"mixerlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in SUBCOMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(sub)
        sub.set_defaults(handler=cmd.run)  # not "run": analyses take a --run option
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except ConfigError as e:
        print(f"mixerlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)


# ---- mixerlab models -----------------------------------------------------------------------------

_COLUMNS = ("model", "params_m", "gmacs", "activations_m", "input_size")
_HEADERS = ("model", "params (M)", "GMACs", "activations (M)", "input")


def _configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'u_swin_*' (default: all)")
    p.add_argument("--img-size", type=int, help="square input side in pixels (default: each model's own, 224)")
    p.add_argument("--in-chans", type=int, help="input channels (default: each model's own, 3)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")


def _run_models(args: argparse.Namespace) -> None:
    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"PATTERN={args.pattern!r} matches no model: registered models are {list_models()}")
    overrides: dict[str, Any] = {}
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    if args.in_chans is not None:
        overrides["in_chans"] = args.in_chans
    for name in names:  # reject a bad size for any model before counting the first
        model_config(name, **overrides)

    rows = []
    width = max(len(n) for n in names)
    if args.format == "table":
        print(f"{_HEADERS[0]:<{width}}  {_HEADERS[1]:>10}  {_HEADERS[2]:>8}  {_HEADERS[3]:>15}  {_HEADERS[4]}")
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(_COLUMNS)
    for name in names:
        rec = complexity(name, **overrides)
        size = "x".join(str(s) for s in rec.input_size)
        row = {"model": name, "params_m": round(rec.params_m, 4), "gmacs": round(rec.gmacs, 4),
               "activations_m": round(rec.activations_m, 4), "input_size": size}
        rows.append(row)
        if args.format == "table":  # stream rows: counting a large zoo takes a while
            print(f"{name:<{width}}  {rec.params_m:>10.2f}  {rec.gmacs:>8.3f}  {rec.activations_m:>15.2f}  {size}",
                  flush=True)
        elif writer is not None:
            writer.writerow([row[c] for c in _COLUMNS])
            sys.stdout.flush()
    if args.format == "table":
        print("GMACs: 10^9 multiply-accumulates per image (GFLOPs = 2 x GMACs); activations: output elements "
              "of convs, matmuls and attention")
    elif args.format == "json":
        print(json.dumps(rows, indent=2))


add_subcommand("models", "list registered models with params, GMACs and activations",
               _configure_models, _run_models)

from .train.cli import EVAL_HELP, TRAIN_HELP, configure_eval, configure_train, run_eval, run_train  # noqa: E402

add_subcommand("train", TRAIN_HELP, configure_train, run_train)
add_subcommand("eval", EVAL_HELP, configure_eval, run_eval)

from . import demo  # noqa: E402

add_subcommand("demo", "train two models briefly on Fashion-MNIST and compare them (what `make demo` runs)",
               demo.configure, demo.run)

from .analysis import cli as analysis_cli  # noqa: E402

add_subcommand("analyze", "run an analysis (mixerlab analyze ANALYSIS --help)", analysis_cli.configure,
               analysis_cli.run)

from .analysis import bench  # noqa: E402

add_subcommand("bench", bench.BENCH_HELP, bench.configure, bench.run)

from .study import cli as study_cli  # noqa: E402

add_subcommand("study", study_cli.STUDY_HELP, study_cli.configure, study_cli.run)
add_subcommand("report", study_cli.REPORT_HELP, study_cli.configure_report, study_cli.run_report)


if __name__ == "__main__":
    sys.exit(main())
