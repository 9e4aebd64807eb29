"""Process-group environment for the three ways a run starts, with no code change.

- ``deepspeed launch/x.py`` and ``torchrun``: the launcher sets RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT (DeepSpeed also passes ``--local_rank``).
- ``python launch/x.py``: nobody sets them, and ``deepspeed.initialize`` then tries MPI discovery
  and fails (docs/toolchain.md). :func:`setup_env` fills them in for a one-process run.

Also picks DeepSpeed's accelerator before DeepSpeed is imported (``DS_ACCELERATOR=cpu`` when no
CUDA device exists) and points the op JIT cache at the project's ``.cache/torch_extensions`` so
DeepSpeed's JIT ops (the ~30-40 s build of ``deepspeed_shm_comm``, which multi-rank CPU runs need) are built
once per machine, not once per run.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DistributedEnvError(RuntimeError):
    """The launcher's environment is partial or inconsistent."""


@dataclass(frozen=True)
class DistInfo:
    rank: int          # global rank
    world_size: int    # number of processes
    local_rank: int    # rank on this node (picks the GPU)
    local_world_size: int
    launched: bool     # True when a launcher (deepspeed/torchrun) set the environment

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """An unused TCP port on loopback (for one-process runs that still need a rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_cuda() -> bool:
    # torch is cheap to import compared with deepspeed, and tells us if CUDA exists.
    import torch

    return torch.cuda.is_available()


def setup_env(env: dict | None = None) -> DistInfo:
    """Fill in the process-group variables for a one-process run; validate a launcher's ones.

    ``env`` defaults to ``os.environ`` (tests pass a dict). Safe to call twice.
    """
    env = os.environ if env is None else env
    present = [k for k in _ENV_KEYS if k in env]
    launched = bool(present)
    if not launched:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    elif "LOCAL_RANK" not in env and env.get("WORLD_SIZE") == "1":
        env["LOCAL_RANK"] = "0"
    missing = [k for k in _ENV_KEYS if k not in env]
    if missing:
        raise DistributedEnvError(
            f"distributed environment is partial: {sorted(present)} set but {missing} missing; "
            "launch with `deepspeed`/`torchrun`, or unset them all for a one-process `python` run")
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    except ValueError as e:
        raise DistributedEnvError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from None
    if not (0 <= rank < world) or local < 0:
        raise DistributedEnvError(f"RANK={rank} LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
    # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE.
    local_world = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or (0 if launched else world))
    if not local_world:
        local_world = max(local + 1, 1)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_ROOT / ".cache" / "torch_extensions"))
    if "DS_ACCELERATOR" not in env and not _has_cuda():
        env["DS_ACCELERATOR"] = "cpu"
    return DistInfo(rank=rank, world_size=world, local_rank=local, local_world_size=local_world, launched=launched)


def cpu_threads(info: DistInfo) -> int:
    """Intra-op threads per rank on CPU: the cores split between this node's ranks.

    Two ranks with two threads each on two cores thrash; OMP_NUM_THREADS, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, info.local_world_size))
