"""The ground floor: the configuration error and the small validators every layer shares.

Nothing here imports from mixerlab, so ``config``, ``mixers``, ``data`` and ``train`` can all
use one error type and one spelling of each check. Every message names the field, the value and
what is allowed. Booleans are never integers here (``True`` is refused where a count is asked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names field, value and what is allowed."""


def fail(field_name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field_name}={value!r} is invalid: {allowed}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(field_name: str, value: Any, minimum: int = 1) -> None:
    """An integer >= ``minimum`` (default: a positive integer)."""
    if not is_int(value) or value < minimum:
        fail(field_name, value, "a positive integer" if minimum == 1 else f"an integer >= {minimum}")


def check_ints(field_name: str, values: Any, minimum: int = 1, length: int | None = None) -> None:
    """A non-empty list of integers >= ``minimum`` (of ``length`` entries when given)."""
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(is_int(v) and v >= minimum for v in values)
    if not ok or (length is not None and len(values) != length):
        what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        fail(field_name, values, f"a list of {length if length is not None else 'one or more'} {what}")


def check_number(field_name: str, value: Any, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False, high_open: bool = True) -> None:
    """A real number in the interval given by ``low`` / ``high`` (closed below, open above by default)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        fail(field_name, value, f"a number in {lo or '(-inf'}, {hi or 'inf)'}")


def check_choice(field_name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        fail(field_name, value, f"allowed values are {sorted(allowed, key=str)}")


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Reject keys of ``d`` that are not fields of dataclass ``cls``, listing the allowed ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        fail(what, unknown, f"allowed keys are {sorted(known)}")


def stable_hash(obj: Any) -> str:
    """The one config hash of mixerlab (run directories, checkpoints, the study store key on it).

    Canonical JSON: sorted keys, tuples as lists; anything JSON cannot hold is an error rather than
    a silent ``str()`` that would make two different configs collide or one config hash two ways."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class UnknownArgumentError(ConfigError, TypeError):
    """A keyword that is no config field and no argument of the mixer: a ConfigError that is also the
    TypeError Python raises for an unexpected keyword (timm's model contract expects that type)."""
