"""Data-parallel training under torchrun: who this process is, and the few collectives the
trainer needs.

torchrun starts one process per device and tells each who it is through the environment
(`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`). Started
any other way, a process is a world of one: no process group, and every helper here returns
its input unchanged, so the single-process trainer runs exactly as it always has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0  # across all machines
    local_rank: int = 0  # on this machine: which GPU to take
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> DistEnv:
        env = os.environ
        world_size = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world_size,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world_size))),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, the report and pictures."""
        return self.rank == 0


SINGLE_PROCESS = DistEnv()


def join_process_group(env: DistEnv, device: torch.device) -> torch.device:
    """Join the job's process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not env.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    elif device.type == "cpu":
        # Each process would otherwise start a thread per core, and N of them fight over them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
        dist.init_process_group(backend="gloo")
    else:
        raise ValueError(f"distributed training runs on cuda or cpu, not {device.type}")
    return device


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: float, device: torch.device) -> float:
    """`value` summed over all ranks (gloo has no averaging reduction, so callers divide)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj`, on every rank (the others pass anything, typically None)."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_from_all(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
