"""Analyses: each turns a model (a ``MixerNet``, a registered name, a run directory) or a bare mixer into a
plain record (``to_dict()``, JSON-serialisable) plus optional figures. Protocols: SPEC section 8.

One module per analysis, named after it and holding a function of the same name (``erf.erf``,
``properties.properties``, ...); importing a module registers its ``mixerlab analyze`` sub-command
(``cli.register``), so a new analysis module is added to the imports below.
"""

from __future__ import annotations

from . import bench, convergence, dynconv, erf, invariance, properties, stability
from .base import Record, resolve_model, save
from .bench import benchmark
from .dynconv import as_attention, as_dynamic_conv

__all__ = ["Record", "as_attention", "as_dynamic_conv", "bench", "benchmark", "convergence", "dynconv", "erf",
           "invariance", "properties", "resolve_model", "save", "stability"]
