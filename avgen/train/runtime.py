"""Processes and device of a training run: one process, or one rank of a torchrun launch (DDP).

Multi-process (torchrun): rank r of W takes the r-th contiguous B/W slice of each global batch; DDP
averages the per-rank mean gradients, which equals the global batch mean because the slices are
equal. `2 processes x B/2` therefore matches `1 process x B` up to float summation order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from avgen.model.device import resolve_device


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str = "auto") -> Runtime:
    """Single process, or one rank of a torchrun launch (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Runtime(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, dist.get_rank(), dist.get_world_size())


def close_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= rt.world_size
    return values


def out_of_time(mine: bool, rt: Runtime) -> bool:
    """Whether any rank is out of time (all ranks stop at the same step)."""
    if not rt.distributed:
        return mine
    flag = torch.tensor([float(mine)], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())



__all__ = ["Runtime", "close_runtime", "init_runtime", "mean_over_ranks", "out_of_time"]
