"""Which distributed launch this process belongs to, and which strategy it trains with.

Knows: the environment variables launchers set (torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`; MPI's
`OMPI_COMM_WORLD_*` / `PMI_*`, used by accelerate's multi-CPU launcher) and accelerate's `ACCELERATE_USE_FSDP`.
Does not know: process groups, wrapping or reductions (`vrp.train.distributed`). Imports nothing heavy, so the
training config can validate `distributed_strategy` with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from vrp.errors import ConfigError, VrpError

STRATEGIES = ("auto", "ddp", "fsdp")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
LOCAL_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def _env_int(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, int] | None:
    for name in names:
        value = env.get(name, "")
        if value.strip():
            try:
                return name, int(value)
            except ValueError:
                raise VrpError(f"environment variable {name}={value!r} (set by the launcher) is not an integer") \
                    from None
    return None


@dataclass(frozen=True)
class Launch:
    """A process of a distributed launch: its global rank, the number of processes, its rank on its node."""

    rank: int
    world_size: int
    local_rank: int


def detect_launch(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, from the environment a launcher sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`
    of torchrun, or MPI's variables), or None for a process started on its own. Raises VrpError for a rank without a
    world size (or the reverse), non-integers, or a rank outside [0, world size)."""
    env = os.environ if env is None else env
    rank, size = _env_int(env, RANK_VARS), _env_int(env, SIZE_VARS)
    if rank is None and size is None:
        return None
    if rank is None or size is None:
        have, missing = (rank, "WORLD_SIZE") if size is None else (size, "RANK")
        raise VrpError(f"environment variable {have[0]} is set but {missing} is not: start several processes "
                       f"with torchrun or accelerate launch, or unset it")
    local = _env_int(env, LOCAL_VARS)
    launch = Launch(rank[1], size[1], rank[1] if local is None else local[1])
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
        raise VrpError(f"launcher environment: rank {launch.rank} (local {launch.local_rank}) does not fit world "
                       f"size {launch.world_size}")
    return launch


def resolve_strategy(name: str, quantization: str = "none", env: Mapping[str, str] | None = None) -> str:
    """`ddp` or `fsdp` for `distributed_strategy` `name` (`auto`: fsdp when accelerate's launcher set
    ACCELERATE_USE_FSDP=true, else ddp). Raises ConfigError('distributed_strategy') for an unknown name and for
    fsdp with 4-bit weights."""
    env = os.environ if env is None else env
    if name not in STRATEGIES:
        raise ConfigError("distributed_strategy", f"choose from {', '.join(STRATEGIES)}, got {name!r}")
    strategy = name if name != "auto" else (
        "fsdp" if env.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes") else "ddp")
    if strategy == "fsdp" and quantization == "4bit":
        raise ConfigError("distributed_strategy", "fsdp cannot shard 4-bit (QLoRA) weights: FSDP2 gathers "
                                                  "bitsandbytes' Params4bit into plain tensors and loses their "
                                                  "quantization state; use ddp (every GPU holds the 4-bit model)")
    return strategy
