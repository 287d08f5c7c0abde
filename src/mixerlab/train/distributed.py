"""Process group setup (torchrun or SLURM srun), per-rank seeding and the few collectives the engine needs.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Under ``srun`` the
same facts come from ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID``; the master address defaults to
the first host of ``SLURM_NODELIST`` (``node[03-05,09]`` -> ``node03``) and the port to 29500. The backend is
NCCL on GPU and Gloo on CPU. With one process nothing is initialised and every collective is the identity.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether we created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``a[1-3,7],b`` -> ``a1``, ``gpu[007-009]`` -> ``gpu007``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"SLURM_NODELIST={nodelist!r} is not a node list")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def env_from_environment(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank facts from torchrun's or SLURM's variables (torchrun wins); fills MASTER_ADDR/PORT under SLURM."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1"))
        env.setdefault("MASTER_PORT", "29500")
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv()


def init_distributed(device_pref: str) -> DistEnv:
    """Join (or reuse) the process group described by the environment; a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    env = env_from_environment()
    if env.world_size > 1:
        use_cuda = device_pref != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=env.rank, world_size=env.world_size)
        env.owns_group = True
    return env


def resolve_device(pref: str, env: DistEnv) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        pref = f"cuda:{env.local_rank}"
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={pref!r} is invalid here: CUDA is not available; use 'cpu' or 'auto'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Bitwise-repeatable kernels (where torch has them; others warn) or cuDNN autotuning."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_to_all(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (small, picklable; transport only) in rank order."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
