"""Process-group setup and the few collectives the trainer needs (single process: no-ops).

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set, any number of nodes) the backend is NCCL on
CUDA and gloo on CPU. Rendezvous is torchrun's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init() -> Dist:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        td.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank, world, local_rank, device)


def close(dist: Dist) -> None:
    if dist.enabled and td.is_initialized():
        td.destroy_process_group()


def all_reduce_sum(dist: Dist, t: torch.Tensor) -> torch.Tensor:
    if dist.enabled:
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def all_gather(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects: positions, RNG states)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()
