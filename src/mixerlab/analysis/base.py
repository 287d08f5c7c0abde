"""What every analysis shares: plain records, one way to get a model, atomic figure files.

An analysis is a function ``analyse(model | name | run dir | mixer, ...) -> Record`` (plus optional
matplotlib figures in ``record.figures``); it never prints and never reaches into the training
engine: trained models come through :class:`mixerlab.train.RunDir`. The CLI (``mixerlab analyze``)
and, later, the study runner call the same functions and store ``record.to_dict()``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..archs import MixerNet
from ..errors import ConfigError
from ..train.checkpoint import atomic_write
from ..train.rundir import RunDir
from ..zoo import MODEL_CONFIGS, create_model


@dataclass
class Record:
    """Base of analysis records: dataclass fields are the result; ``source`` says what was measured.

    ``figures`` (name -> matplotlib Figure) are not part of the record's data: :func:`save` writes them
    as PNG next to the JSON."""

    source: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "figures"}
        return json.loads(json.dumps(d, default=_plain))  # JSON-serialisable by construction


def _plain(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


ModelSource = MixerNet | str | Path


def resolve_model(source: ModelSource, *, which: str = "model", device: str | torch.device = "cpu",
                  **overrides: Any) -> tuple[MixerNet, dict[str, Any]]:
    """A model and a description of where it came from, from a ``MixerNet``, a registered name (a fresh,
    untrained model built with ``overrides``) or a run directory / checkpoint written by ``mixerlab train``
    (its trained ``which`` weights: 'model' or 'ema')."""
    if isinstance(source, nn.Module):
        if overrides:
            raise ConfigError(f"overrides {sorted(overrides)} are invalid for a model object: pass a name")
        return source, {"kind": "module", "model": type(source).__name__, "trained": None}
    if isinstance(source, str) and source in MODEL_CONFIGS:
        model = create_model(source, **overrides)
        return model.to(device), {"kind": "name", "model": source, "trained": False, "overrides": overrides}
    path = Path(source)
    if path.exists():
        if overrides:
            raise ConfigError(f"overrides {sorted(overrides)} are invalid for a trained run: it has its config")
        run = RunDir.find(path)
        record = run.record()
        return run.load_model(which, device=device), {"kind": "run", "model": record.model, "trained": True,
                                                      "run_dir": str(run.root), "weights": which}
    raise ConfigError(f"model={str(source)!r} is invalid: a registered model name (mixerlab.list_models()), "
                      "a run directory / checkpoint written by `mixerlab train`, or a model object")


def save(record: Record, out: str | Path, name: str) -> list[Path]:
    """Write ``<out>/<name>.json`` and each figure as ``<out>/<name>_<figure>.png``, each atomically
    (temp file then rename), and return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json"]
    atomic_write(paths[0], lambda f: f.write(json.dumps(record.to_dict(), indent=2).encode()))
    for fig_name, fig in record.figures.items():
        p = out / f"{name}_{fig_name}.png"
        atomic_write(p, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
        paths.append(p)
    return paths
