"""Crash-safe checkpoints: safetensors weights, a ``weights_only``-loadable state file and a JSON manifest.

Layout under ``<run_dir>/checkpoints/`` (the names are defined in ``rundir.py``)::

    step-00001234.safetensors   model.* and ema.* tensors
    step-00001234.state.pt      optimiser, scheduler, scaler, per-rank RNG states, epoch / position / counters
    latest.json                 manifest: file names + sha256, model name, model config and its hash

Every file is written to a temporary file in the same directory, flushed, fsync'd and ``os.replace``'d; the
manifest is written last, so at any instant ``latest.json`` names a complete, consistent pair (a crash leaves
at worst an orphan file, removed at the next save). Loading checks the sha256 of both files and the model
config hash before anything is restored. The state holds only tensors and plain Python values: RNG states are
converted to tensors / numbers so ``torch.load(weights_only=True)`` reads it without unpickling objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors.torch
import torch

from ..errors import stable_hash
from .rundir import MANIFEST, CheckpointError, find_manifest

FORMAT = "mixerlab-checkpoint-1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temp file in the same directory, fsync it, rename over ``path``, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()))


def model_hash(name: str, model_config: dict[str, Any]) -> str:
    """The model identity a checkpoint is bound to: its name and resolved config (``model.config.to_dict()``).

    Through :func:`mixerlab.errors.stable_hash`, which refuses anything but plain JSON data (tuples count as
    lists), so a config cannot hash two ways."""
    return stable_hash({"model": name, "config": model_config})


# ---- RNG states as plain data --------------------------------------------------------------------
def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
           "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
           "python_version": int(version), "python_state": torch.tensor(py_state, dtype=torch.int64),
           "python_gauss": py_gauss}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(s: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"],
                         s["numpy_has_gauss"], s["numpy_gauss"]))
    random.setstate((s["python_version"], tuple(s["python_state"].tolist()), s["python_gauss"]))
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


# ---- save / load ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]  # model.* / ema.*
    state: dict[str, Any]

    def model_weights(self, prefix: str = "model.") -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.weights.items() if k.startswith(prefix)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(ckpt_dir: Path, weights: dict[str, torch.Tensor], state: dict[str, Any],
                    manifest: dict[str, Any]) -> Path:
    """Write weights, state, then the manifest naming them; delete files of older checkpoints. Returns the
    manifest path. ``manifest`` must hold ``global_step``; file names and checksums are added here."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step-{manifest['global_step']:08d}"
    wpath, spath = ckpt_dir / f"{stem}.safetensors", ckpt_dir / f"{stem}.state.pt"
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write(wpath, lambda f: f.write(safetensors.torch.save(tensors)))
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(spath, lambda f: f.write(buf.getvalue()))
    manifest = {**manifest, "format": FORMAT, "weights": wpath.name, "state": spath.name,
                "sha256": {wpath.name: _sha256(wpath), spath.name: _sha256(spath)}}
    mpath = ckpt_dir / MANIFEST
    atomic_write_json(mpath, manifest)
    for old in ckpt_dir.glob("step-*"):
        if old.name not in (wpath.name, spath.name):
            old.unlink()
    return mpath


def read_manifest(mpath: Path) -> dict[str, Any]:
    """The manifest at ``mpath``, its format checked (no weights are read)."""
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint manifest {mpath} is corrupt ({e}); delete the run dir or start "
                              "with --overwrite") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint manifest {mpath} is not a {FORMAT} manifest")
    return manifest


def load_checkpoint(path: str | Path, *, with_state: bool = True) -> Checkpoint:
    """Read and verify a checkpoint (checksums, format); raise :class:`CheckpointError` on any problem.
    ``path``: a run dir, its ``checkpoints`` dir or a manifest."""
    mpath = find_manifest(path)
    manifest = read_manifest(mpath)
    files = {"weights": mpath.parent / manifest["weights"], "state": mpath.parent / manifest["state"]}
    for kind, f in files.items():
        if kind == "state" and not with_state:
            continue
        if not f.is_file():
            raise CheckpointError(f"checkpoint {kind} file {f} named by {mpath} is missing")
        if _sha256(f) != manifest["sha256"][f.name]:
            raise CheckpointError(f"checkpoint {kind} file {f} is corrupt: its sha256 differs from the one in "
                                  f"{mpath}; the file was damaged after it was written")
    try:
        weights = safetensors.torch.load_file(str(files["weights"]))
        state = torch.load(files["state"], map_location="cpu", weights_only=True) if with_state else {}
    except Exception as e:  # checksum matched but the content does not parse: a foreign or buggy writer
        raise CheckpointError(f"checkpoint files named by {mpath} cannot be read: {e}") from e
    return Checkpoint(manifest, weights, state)
