"""Throughput and memory of a model, alone or against a timm peer measured side by side (SPEC 8.2).

Conventions of timm's ``benchmark.py``: random input ``(B, C, S, S)``, warm-up steps, then timed steps,
synchronised on CUDA. Two modes:

* ``infer``: ``model(x)`` under ``torch.inference_mode()`` in eval mode;
* ``train``: train mode, ``loss = cross_entropy(model(x), y)`` for random labels, ``loss.backward()``,
  ``AdamW.step()``, ``zero_grad(set_to_none=True)`` (fp16: through a GradScaler).

``precision`` fp32, bf16 (autocast) or fp16 (autocast, CUDA only); ``channels_last`` converts model and input;
``compile`` wraps the model in ``torch.compile`` (compilation happens in the warm-up steps, whose first
step's time is reported apart); ``freeze`` (inference only) compiles under inductor's freezing, which folds the
parameters into the graph as constants and prepacks the weights for oneDNN: a deployment mode, since the
compiled model no longer sees changes to its parameters. Each repetition times one step; a model's result is
the median step time with its quartiles and range.

With a ``peer`` (a timm model name) both models are built with the same input size, channels, classes and
drop-path rate and measured side by side, repetitions alternating (mixerlab, timm, timm, mixerlab, ...),
so that both see the same machine load; ``peer_eager`` keeps the peer eager while mixerlab's model is compiled
(mixerlab's best mode against timm's default one); ``ratio`` is the median over repetitions of the paired
throughput ratio mixerlab / timm (> 1: mixerlab is faster). That ratio is the figure to quote, not two absolute times.

Where the models run: ``order="separate"`` (the default with a peer) gives each model a spawned process of
its own, as a user runs it, driven from this one through a pipe: one warm-up after the other, then the ABBA
repetitions, each step timed inside its process while the other process waits, blocked on the pipe. The other
choices put both models in one process, and there the order matters on the CPU: glibc's allocator hands freed
memory back to the kernel by its own thresholds, so the two models do not pay the same fresh-page faults per
step, and which pays more depends on who allocated first (compiled Swin-T train step, one process: 77k vs 24k
minor faults per step and a ratio of 0.90 with mixerlab first, 0.99 with timm first; the direction is not the
same in every run; each model alone in its process: 1.04-1.06). ``mixerlab-first`` / ``peer-first`` fix the
order; ``balanced`` runs the pair twice, each time in a fresh process, mixerlab first and then timm first, and
pools the repetitions of both (``results[mode]["by_order"]`` keeps each process's own results; each model's
peak memory is taken from the process where it ran first; first-step times from the mixerlab-first process,
which runs first and so finds inductor's caches cold for both models).

Peak memory is that of a steady step, measured over the warm-up steps after the first (the first compiles,
creates the optimiser state and fills caches, and with a cold inductor cache compiling takes more resident
memory than any step), above what the process holds between steps (the weights and, in train mode,
AdamW's state, 8 bytes per parameter, the same for a model and its peer). On CUDA it is
``torch.cuda.max_memory_allocated`` above the allocation before those steps; on CPU, the process's peak
resident set size above the resident size before them (Linux: the peak is reset through
``/proc/self/clear_refs`` and read from ``VmHWM``; elsewhere ``ru_maxrss``, which only ever grows, so a second
model reads low). It includes activations, gradients and the optimiser step's temporaries. The CPU figure is
approximate: the allocator may keep freed memory resident and reuse it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import ctypes
import gc
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import ConfigError, check_choice, check_int
from ..linear import cpu_matmul_backend, set_cpu_matmul_backend
from ..zoo import MODEL_CONFIGS
from .base import ModelSource, Record, resolve_model

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("infer", "train")
ORDERS = ("separate", "balanced", "mixerlab-first", "peer-first")
DEFAULT_CSV = Path("benchmarks/results.csv")


@dataclass
class BenchRecord(Record):
    timestamp: str = ""  # UTC, when the measurement started
    peer: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    memory_method: str = ""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # "mixerlab" / "peer" -> params, name
    # mode -> {"mixerlab": stats, "peer": stats (with a peer), "ratio": stats of the paired ratio}
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- machine and memory ------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), logical cores, torch threads, the 1-minute load, GPU, library versions and the
    backend of mixerlab's CPU float32 linear layers (``mixerlab.linear``: oneDNN or torch's BLAS)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
        "mixerlab": __version__, "cpu_matmul": cpu_matmul_backend() if device.type == "cpu" else None}
    return info


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


class MemoryMeter:
    """Peak memory of a code region above the memory in use when it starts (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = ("cuda max_memory_allocated over the warm-up steps after the first, above the allocation "
                           "before them")
        elif _can_reset_peak_rss():
            self.method = ("process peak RSS (VmHWM, reset via /proc/self/clear_refs) over the warm-up steps after "
                           "the first, above the RSS before them")
        else:
            self.method = "process ru_maxrss growth over the warm-up steps after the first (lower bound)"
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        with contextlib.suppress(OSError, AttributeError):  # glibc only: hand freed heap back to the OS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if self.method.startswith("process peak RSS"):
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _status_kb("VmRSS") * 1024
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("process peak RSS"):
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self._base, 0) / 2**20


# ---- steps -------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, precision: str) -> Callable[[], None]:
    """One inference or training step of ``model`` on the fixed batch ``(x, y)``, synchronised."""
    device = x.device
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), _autocast(device, precision):
                model(x)
            _sync(device)

        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def train() -> None:
        with _autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)

    return train


def _timed(step: Callable[[], None]) -> float:
    t = time.perf_counter()
    step()
    return (time.perf_counter() - t) * 1000.0


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of ``values``."""
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "min": v[0], "max": v[-1]}


# ---- the benchmark -----------------------------------------------------------------------------------

def _check_compile(compile: bool, freeze: bool, peer_eager: bool, peer: str | None, modes: Sequence[str]) -> None:
    if freeze and not compile:
        raise ConfigError("freeze=True is invalid without compile=True: freezing is a torch.compile (inductor) mode")
    if freeze and "train" in modes:
        raise ConfigError(f"freeze=True is invalid with modes={list(modes)!r}: frozen parameters cannot be trained; "
                          "allowed: modes=['infer']")
    if peer_eager and (peer is None or not compile):
        raise ConfigError("peer_eager=True is invalid here: it keeps a peer eager while mixerlab's model is "
                          "compiled, so it needs peer=... and compile=True")


def _check(batch_size: int, img_size: int, in_chans: int, num_classes: int, precision: str, device: str,
           warmup: int, reps: int, modes: Sequence[str], threads: int | None) -> torch.device:
    for name, value, minimum in (("batch_size", batch_size, 1), ("img_size", img_size, 1), ("in_chans", in_chans, 1),
                                 ("num_classes", num_classes, 1), ("warmup", warmup, 2), ("reps", reps, 1)):
        check_int(name, value, minimum)
    if threads is not None:
        check_int("threads", threads)
    check_choice("precision", precision, PRECISIONS)
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ConfigError(f"modes={list(modes)!r} is invalid: distinct values of {list(MODES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is invalid: 'cpu', 'cuda' or 'cuda:N'") from e
    check_choice("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} is invalid: CUDA is not available here; use 'cpu'")
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError(f"precision='fp16' is invalid on device={device!r}: fp16 autocast is measured on CUDA "
                          "only; allowed on CPU: ['bf16', 'fp32']")
    return dev


def build_peer(name: str, *, img_size: int, in_chans: int, num_classes: int, drop_path: float) -> nn.Module:
    """The timm model ``name``, untrained, at mixerlab's settings: ``img_size`` only for models with a fixed
    input size (timm's pretrained cfg says which; the others take any size), the same drop-path rate."""
    kwargs: dict[str, Any] = {"in_chans": in_chans, "num_classes": num_classes, "drop_path_rate": drop_path}
    if timm.models.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ConfigError(f"peer={name!r} is invalid here: timm's model does not take {sorted(kwargs)} ({e})") from e


def benchmark(model_or_name: ModelSource, *, peer: str | None = None, batch_size: int = 8,
              img_size: int | None = None, in_chans: int | None = None, num_classes: int | None = None,
              precision: str = "fp32", channels_last: bool = False,
              compile: bool = False, freeze: bool = False, peer_eager: bool = False, device: str = "cpu",
              warmup: int = 3, reps: int = 10, modes: Sequence[str] = MODES,
              threads: int | None = None, order: str = "separate") -> BenchRecord:
    """Images/s, ms/step and peak memory of a model (a MixerNet, a registered name: built untrained at
    ``img_size`` / ``in_chans`` / ``num_classes``, or a run directory) in each of ``modes``, optionally against
    the timm model ``peer``; see the module docstring for the protocol. ``img_size`` / ``in_chans`` /
    ``num_classes`` default to 224 / 3 / 1000 for a name and to the model's own for a run or a module.
    ``threads`` sets torch's intra-op threads for the measurement (restored afterwards). ``order`` (with a
    peer): ``separate`` (each model in a process of its own, in lock-step), ``balanced`` (one process, both
    orders in two fresh processes, pooled), ``mixerlab-first`` or ``peer-first``. Nothing is printed or
    written."""
    if isinstance(model_or_name, str) and model_or_name in MODEL_CONFIGS:  # None is "the default"; a given 0
        img_size = 224 if img_size is None else img_size                   # is an error below, not a default
        in_chans = 3 if in_chans is None else in_chans
        num_classes = 1000 if num_classes is None else num_classes
    dev = _check(batch_size, 1 if img_size is None else img_size, 1 if in_chans is None else in_chans,
                 1 if num_classes is None else num_classes, precision, device, warmup, reps, modes, threads)
    _check_compile(compile, freeze, peer_eager, peer, modes)
    check_choice("order", order, ORDERS)
    if peer is not None and not timm.is_model(peer):
        raise ConfigError(f"peer={peer!r} is invalid: a timm model name (timm.list_models())")
    if peer is not None and order == "balanced":
        kwargs = {"peer": peer, "batch_size": batch_size, "img_size": img_size, "in_chans": in_chans,
                  "num_classes": num_classes, "precision": precision, "channels_last": channels_last,
                  "compile": compile, "freeze": freeze, "peer_eager": peer_eager, "device": device,
                  "warmup": warmup, "reps": reps, "modes": tuple(modes),
                  "threads": torch.get_num_threads() if threads is None else threads}
        return _balanced(model_or_name, kwargs)
    net, source, img_size, in_chans, num_classes = _resolve(model_or_name, dev, img_size, in_chans, num_classes)

    old_threads, old_cudnn = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: cuDNN picks its fastest kernels in warm-up
    try:
        # Inductor reads its freezing flag when it compiles, i.e. in the warm-up steps inside _measure.
        with torch._inductor.config.patch(freezing=freeze) if freeze else contextlib.nullcontext():
            return _measure(net, source, peer, dev, batch_size=batch_size, img_size=img_size, in_chans=in_chans,
                            num_classes=num_classes, precision=precision, channels_last=channels_last,
                            compile=compile, freeze=freeze, peer_eager=peer_eager, warmup=warmup, reps=reps,
                            modes=list(modes), order=order)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_cudnn


def _resolve(model_or_name: ModelSource, dev: torch.device, img_size: int | None, in_chans: int | None,
             num_classes: int | None) -> tuple[nn.Module, dict[str, Any], int, int, int]:
    """The model to measure (a copy of a caller's module) with its source and geometry (given or its own)."""
    if isinstance(model_or_name, str) and model_or_name in MODEL_CONFIGS:
        net, source = resolve_model(model_or_name, device=dev, img_size=img_size, in_chans=in_chans,
                                    num_classes=num_classes)
    else:
        net, source = resolve_model(model_or_name, device=dev)
        if source["kind"] == "module":  # the train steps update weights: work on a copy of the caller's model
            net = copy.deepcopy(net).to(dev)
        own = getattr(net, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
        img_size = own[-1] if img_size is None else img_size
        in_chans = own[0] if in_chans is None else in_chans
        num_classes = max(getattr(net, "num_classes", 1000), 1) if num_classes is None else num_classes
    if getattr(net, "in_chans", in_chans) != in_chans:
        raise ConfigError(f"in_chans={in_chans} is invalid for this model: it takes in_chans={net.in_chans}")
    return net, source, img_size, in_chans, num_classes


def _measure(net: nn.Module, source: dict[str, Any], peer: str | None, dev: torch.device, *, batch_size: int,
             img_size: int, in_chans: int, num_classes: int, precision: str, channels_last: bool, compile: bool,
             freeze: bool, peer_eager: bool, warmup: int, reps: int, modes: list[str], order: str) -> BenchRecord:
    cfg = getattr(net, "config", None)
    drop_path = float(cfg.drop_path) if cfg is not None else 0.0
    spec = {"batch_size": batch_size, "img_size": img_size, "in_chans": in_chans, "num_classes": num_classes,
            "precision": precision, "channels_last": channels_last, "device": str(dev)}
    compiled = {"mixerlab": compile, "peer": compile and not peer_eager}
    meter = MemoryMeter(dev)
    settings = {**spec, "compile": compile, "freeze": freeze, "peer_compile": peer is not None and compiled["peer"],
                "warmup": warmup, "reps": reps, "modes": modes, "drop_path": drop_path,
                "optimizer": "AdamW(lr=1e-4)", "order": order if peer is not None else ""}
    models = {"mixerlab": {"name": source.get("model"), "params_m": sum(p.numel() for p in net.parameters()) / 1e6}}
    sides: dict[str, _Side | _RemoteSide] = {}
    with contextlib.ExitStack() as stack:
        if peer is not None:
            peer_build = {"img_size": img_size, "in_chans": in_chans, "num_classes": num_classes,
                          "drop_path": drop_path}
            if order == "separate":  # each model in a process of its own, driven in lock-step from here
                threads = torch.get_num_threads()
                for key, build in (("mixerlab", {"model": net.cpu()}), ("peer", {"peer": peer, **peer_build})):
                    sides[key] = stack.enter_context(_RemoteSide({**build, "spec": spec, "compile": compiled[key],
                                                                  "freeze": freeze, "threads": threads,
                                                                  "cpu_matmul": cpu_matmul_backend()}))
                models["peer"] = {"name": peer, "params_m": sides["peer"].params_m}
            else:
                peer_net = build_peer(peer, **peer_build).to(dev)
                models["peer"] = {"name": peer, "params_m": sum(p.numel() for p in peer_net.parameters()) / 1e6}
                sides = {"mixerlab": _Side(net, compile, spec), "peer": _Side(peer_net, compiled["peer"], spec)}
        else:
            sides = {"mixerlab": _Side(net, compile, spec)}
        record = BenchRecord(source=source, timestamp=datetime.now(UTC).isoformat(timespec="seconds"), peer=peer,
                             settings=settings, machine=machine_info(dev), memory_method=meter.method, models=models)
        for mode in modes:
            keys = list(sides)[::-1] if order == "peer-first" else list(sides)
            first, memory = {}, {}
            for k in keys:  # warm-up one model at a time: the first step compiles, the others give the memory
                first[k], memory[k] = sides[k].warm(mode, warmup)
            times: dict[str, list[float]] = {k: [] for k in keys}
            for i in range(reps):  # alternating, ABBA: each repetition times every model once, the order reversed
                for k in keys if i % 2 == 0 else keys[::-1]:  # every other time, so neither always goes first
                    times[k].append(sides[k].time(mode))
            out: dict[str, Any] = {}
            for k in sides:
                ms = summary(times[k])
                out[k] = {"ms_per_step": ms, "images_per_s": 1000.0 * batch_size / ms["median"],
                          "first_step_ms": first[k], "peak_memory_mb": memory[k], "times_ms": times[k]}
            if peer is not None:  # paired: rep i of mixerlab against rep i of timm
                out["ratio"] = summary([p / m for m, p in zip(times["mixerlab"], times["peer"], strict=True)])
            record.results[mode] = out
    return record


class _Side:
    """One model of a measurement, where it runs: compiled as asked, its step per mode warmed up and timed on
    the fixed random batch of ``spec``'s geometry (seeded, so every process builds the same batch)."""

    def __init__(self, model: nn.Module, compile: bool, spec: dict[str, Any]) -> None:
        dev = torch.device(spec["device"])
        fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
        model.to(memory_format=fmt)
        self.model = torch.compile(model) if compile else model
        g = torch.Generator().manual_seed(0)
        b, c, s = spec["batch_size"], spec["in_chans"], spec["img_size"]
        self.x = torch.randn(b, c, s, s, generator=g).to(dev, memory_format=fmt)
        self.y = torch.randint(0, spec["num_classes"], (b,), generator=g).to(dev)
        self.precision, self.meter, self.steps = spec["precision"], MemoryMeter(dev), {}

    def warm(self, mode: str, warmup: int) -> tuple[float, float]:
        """The first step's ms (compilation included) and the peak memory MB of the remaining warm-up steps."""
        step = self.steps[mode] = make_step(self.model, mode, self.x, self.y, self.precision)
        first = _timed(step)
        self.meter.start()
        for _ in range(warmup - 1):
            step()
        return first, self.meter.peak_mb()

    def time(self, mode: str) -> float:
        return _timed(self.steps[mode])


def _serve(conn: Any, build: dict[str, Any]) -> None:
    """A spawned process holding one :class:`_Side`: runs its ``warm`` / ``time`` calls as they come through
    ``conn``, blocked on the pipe (no CPU) between them, until told to stop."""
    try:
        torch.set_num_threads(build["threads"])
        set_cpu_matmul_backend(build["cpu_matmul"])  # this process's choice, as the record says
        torch.backends.cudnn.benchmark = True
        dev = torch.device(build["spec"]["device"])
        if "peer" in build:
            model = build_peer(build["peer"], **{k: build[k] for k in ("img_size", "in_chans", "num_classes",
                                                                       "drop_path")}).to(dev)
        else:
            model = build["model"].to(dev)
        with torch._inductor.config.patch(freezing=build["freeze"]) if build["freeze"] else contextlib.nullcontext():
            side = _Side(model, build["compile"], build["spec"])
            conn.send(("ok", sum(p.numel() for p in model.parameters()) / 1e6))
            while (msg := conn.recv())[0] != "stop":
                conn.send(("ok", getattr(side, msg[0])(*msg[1:])))
    except Exception as e:  # handed to the driver, which raises it
        conn.send(("error", e))


class _RemoteSide:
    """A :class:`_Side` in a spawned process of its own (a context manager: the process stops on exit)."""

    def __init__(self, build: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, build), daemon=True)
        self.proc.start()
        child.close()
        self.params_m = self._reply()

    def _reply(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"the benchmark process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise value
        return value

    def warm(self, mode: str, warmup: int) -> tuple[float, float]:
        self.conn.send(("warm", mode, warmup))
        return self._reply()

    def time(self, mode: str) -> float:
        self.conn.send(("time", mode))
        return self._reply()

    def __enter__(self) -> _RemoteSide:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.terminate()


def _balanced(model: ModelSource, kwargs: dict[str, Any]) -> BenchRecord:
    """The pair measured mixerlab-first, then peer-first, each in a fresh process (the allocator's state is
    per process, so no in-process order undoes it), pooled; see the module docstring."""
    records = {}
    for order in ("mixerlab-first", "peer-first"):  # one after the other: the processes must not share the cores
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            records[order] = pool.submit(benchmark, model, order=order, **kwargs).result()
    ml_first, peer_first = records["mixerlab-first"], records["peer-first"]
    results: dict[str, dict[str, Any]] = {}
    for mode, res in ml_first.results.items():
        out: dict[str, Any] = {}
        for k, ran_first in (("mixerlab", res), ("peer", peer_first.results[mode])):
            ts = res[k]["times_ms"] + peer_first.results[mode][k]["times_ms"]
            ms = summary(ts)
            out[k] = {"ms_per_step": ms, "images_per_s": 1000.0 * kwargs["batch_size"] / ms["median"],
                      "first_step_ms": res[k]["first_step_ms"], "peak_memory_mb": ran_first[k]["peak_memory_mb"],
                      "times_ms": ts}
        out["ratio"] = summary([p / m for m, p in zip(out["mixerlab"]["times_ms"], out["peer"]["times_ms"],
                                                      strict=True)])
        out["by_order"] = {o: r.results[mode] for o, r in records.items()}
        results[mode] = out
    return replace(ml_first, settings={**ml_first.settings, "order": "balanced"}, results=results)


# ---- CSV ---------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "timestamp", "model", "peer", "mode", "batch_size", "img_size", "in_chans", "num_classes", "precision",
    "channels_last", "compile", "freeze", "peer_compile", "device", "warmup", "reps", "drop_path", "order",
    "images_per_s", "ms_median", "ms_q1", "ms_q3", "ms_min", "ms_max", "first_step_ms", "peak_memory_mb",
    "peer_images_per_s", "peer_ms_median", "peer_ms_q1", "peer_ms_q3", "peer_first_step_ms", "peer_peak_memory_mb",
    "ratio_median", "ratio_q1", "ratio_q3", "ratio_min", "ratio_max",
    "ratio_median_mixerlab_first", "ratio_median_peer_first",
    "params_m", "peer_params_m", "memory_method", "cpu", "cores", "threads", "load_1m", "gpu", "python", "torch",
    "timm", "mixerlab", "cpu_matmul")


def csv_rows(record: BenchRecord) -> list[dict[str, Any]]:
    """One row per mode: settings, the mixerlab and peer results, the ratio and the machine."""
    s = record.settings
    rows = []
    for mode, res in record.results.items():
        row: dict[str, Any] = {"timestamp": record.timestamp, "model": record.models["mixerlab"]["name"],
                               "peer": record.peer or "", "mode": mode,
                               **{k: s[k] for k in ("batch_size", "img_size", "in_chans", "num_classes", "precision",
                                                    "channels_last", "compile", "freeze", "peer_compile",
                                                    "device", "warmup", "reps", "drop_path", "order")}}
        for prefix, key in (("", "mixerlab"), ("peer_", "peer")):
            r = res.get(key)
            row[f"{prefix}images_per_s"] = "" if r is None else round(r["images_per_s"], 3)
            for q in ("median", "q1", "q3") + (("min", "max") if not prefix else ()):
                row[f"{prefix}ms_{q}"] = "" if r is None else round(r["ms_per_step"][q], 3)
            row[f"{prefix}first_step_ms"] = "" if r is None else round(r["first_step_ms"], 1)
            row[f"{prefix}peak_memory_mb"] = "" if r is None else round(r["peak_memory_mb"], 1)
            row[f"{prefix}params_m"] = "" if key not in record.models else round(record.models[key]["params_m"], 3)
        for q in ("median", "q1", "q3", "min", "max"):
            row[f"ratio_{q}"] = round(res["ratio"][q], 4) if "ratio" in res else ""
        by_order = res.get("by_order", {s["order"]: res} if "ratio" in res else {})
        for o in ("mixerlab-first", "peer-first"):
            r = by_order.get(o)
            row[f"ratio_median_{o.replace('-', '_')}"] = "" if r is None else round(r["ratio"]["median"], 4)
        row["memory_method"] = record.memory_method
        row.update({k: record.machine[k] for k in ("cpu", "cores", "threads", "load_1m", "gpu", "python", "torch",
                                                   "timm", "mixerlab", "cpu_matmul")})
        rows.append(row)
    return rows


def append_csv(record: BenchRecord, path: str | Path = DEFAULT_CSV) -> Path:
    """Append the record's rows to ``path`` (header on creation) in one write, flushed and fsynced. A file with
    another header is refused rather than mixed."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = f.readline().rstrip("\r\n")
        if header != ",".join(CSV_COLUMNS):
            raise ConfigError(f"csv={str(path)!r} is invalid: it holds other columns ({header[:80]}...); "
                              "give a new file")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.writeheader()
    writer.writerows(csv_rows(record))
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    return path


# ---- mixerlab bench ----------------------------------------------------------------------------------

BENCH_HELP = ("throughput (images/s, ms/step) and peak memory, optionally against a timm peer "
              "(each model in a process of its own, steps alternating)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, or a run directory written by `mixerlab train`")
    p.add_argument("--peer", default=None, help="timm model measured alongside, alternating repetitions "
                   "(e.g. swin_tiny_patch4_window7_224 for swin_tiny_ml)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=None, help="default: 224 for a name, the run's own for a run")
    p.add_argument("--in-chans", type=int, default=None, help="default: 3 for a name, the run's own for a run")
    p.add_argument("--num-classes", type=int, default=None, help="default: 1000 for a name, the run's own")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16 / fp16: autocast (fp16 CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--freeze", action="store_true", help="with --compile --modes infer: inductor's freezing "
                   "(parameters folded as constants, weights prepacked)")
    p.add_argument("--peer-eager", action="store_true", help="with --compile: keep the peer eager")
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per model and mode, at "
                   "least 2: the first compiles, the others give the peak memory (default 3)")
    p.add_argument("--reps", type=int, default=10, help="timed steps per model and mode (default 10)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--order", default="separate", choices=ORDERS, help="with --peer: separate (default): each "
                   "model in a process of its own, steps alternating in lock-step; balanced: both in one process, "
                   "run mixerlab-first and peer-first in two fresh processes, pooled; or one fixed order")
    p.add_argument("--csv", default=str(DEFAULT_CSV), help=f"CSV to append to (default {DEFAULT_CSV}; '' for none)")
    p.add_argument("--format", default="table", choices=("table", "json"))


def run(args: argparse.Namespace) -> int:
    record = benchmark(args.model, peer=args.peer, batch_size=args.batch_size, img_size=args.img_size,
                       in_chans=args.in_chans, num_classes=args.num_classes, precision=args.precision,
                       channels_last=args.channels_last, compile=args.compile, freeze=args.freeze,
                       peer_eager=args.peer_eager, device=args.device,
                       warmup=args.warmup, reps=args.reps, modes=args.modes, threads=args.threads,
                       order=args.order)
    if args.csv:
        append_csv(record, args.csv)
    if args.format == "json":
        print(json.dumps(record.to_dict(), indent=2))
    else:
        print(table(record))
    return 0


def table(record: BenchRecord) -> str:
    s, mach = record.settings, record.machine
    lines = [f"{'mode':<6} {'model':<32} {'ms/step':>9} {'(q1-q3)':>17} {'img/s':>9} {'peak MB':>8}"]
    lines.append("-" * len(lines[0]))
    for mode, res in record.results.items():
        for key in ("mixerlab", "peer"):
            if key in res:
                r, ms = res[key], res[key]["ms_per_step"]
                name = str(record.models[key]["name"])
                lines.append(f"{mode:<6} {name:<32} {ms['median']:>9.2f} {ms['q1']:>8.2f}-{ms['q3']:<8.2f} "
                             f"{r['images_per_s']:>9.1f} {r['peak_memory_mb']:>8.1f}")
        if "ratio" in res:
            q = res["ratio"]
            lines.append(f"{mode:<6} throughput mixerlab / timm = {q['median']:.3f}  (q1-q3 {q['q1']:.3f}-"
                         f"{q['q3']:.3f}, paired reps; > 1: mixerlab faster)")
        if "by_order" in res:
            lines.append(f"{mode:<6} by order: " + ", ".join(f"{o} {r['ratio']['median']:.3f}"
                                                              for o, r in res["by_order"].items()))
    lines.append(f"batch {s['batch_size']}, {s['in_chans']}x{s['img_size']}x{s['img_size']}, {s['precision']}, "
                 f"channels_last={s['channels_last']}, compile={s['compile']}, freeze={s['freeze']}, "
                 f"peer compiled={s['peer_compile']}, {s['device']}, warm-up {s['warmup']}, "
                 f"{s['reps']} reps{', order ' + s['order'] if s.get('order') else ''}; "
                 f"{mach['cpu']} ({mach['cores']} cores, {mach['threads']} threads, "
                 f"load {mach['load_1m']}); torch {mach['torch']}, timm {mach['timm']}; "
                 f"mixerlab CPU matmul {mach.get('cpu_matmul')}; memory: {record.memory_method}")
    return "\n".join(lines)

