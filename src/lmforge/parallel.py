"""Parallelism: the process group, the DeviceMesh, and the plan applied to a built model.

The model file never imports this; the trainer calls `setup_distributed` once and `parallelize`
on the model it built. Single-process runs get a DistContext of world size 1 and the model
unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.train.config import ParallelConfig


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0  # this rank's index among data-parallel replicas (the loader shards by it)
    dp_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def setup_distributed(cfg: ParallelConfig, device: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    degrees = cfg.dp_replicate * cfg.dp_shard * cfg.tp * cfg.pp
    if world == 1 and degrees == 1:
        return DistContext(device=pick_device(device))
    raise LmforgeError(
        f"parallel degrees multiply to {degrees} but WORLD_SIZE is {world}; distributed training is not available yet"
    )


def parallelize(model: torch.nn.Module, cfg: ParallelConfig, ctx: DistContext) -> torch.nn.Module:
    return model
