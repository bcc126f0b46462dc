"""Data-parallel training across processes started by ``torchrun`` (gloo on CPU, NCCL on GPU).

Every rank draws the same global batch from identically seeded generators and trains on
its own slice, so gradients averaged by DistributedDataParallel equal those of one
process on the whole batch: a run's loss curve does not depend on the process count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's part of a global batch of n (n must be divisible by the world size)."""
        if n % self.world:
            raise ValueError(f"batch of {n} cannot be split evenly over {self.world} processes")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def mean(self, value: float) -> float:
        """Average of a Python number over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.item() / self.world

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return net
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def from_environment(device: torch.device) -> Dist:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, ...);
    a plain single-process ``Dist`` when they are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
