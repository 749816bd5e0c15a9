"""The process group, the DeviceMesh over (pp, dp_replicate, dp_shard, tp), and rank coordination."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.distributed.config import ParallelConfig
from lmforge.errors import LmforgeError

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0  # this rank's index among data-parallel replicas (the loader shards by it)
    dp_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: Any = None  # the world DeviceMesh with dims MESH_DIMS (None in a single process)
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def submesh(self, *names: str):
        """The sub-mesh over `names` (e.g. "dp_replicate", "dp_shard"), or None single-process."""
        return None if self.mesh is None else self.mesh[names if len(names) > 1 else names[0]]


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for `name` ("auto": this rank's GPU when there is one, else the CPU), or one
    clear error when the name asks for hardware this PyTorch build cannot reach."""
    if name != "auto":
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise LmforgeError(f"device {name!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build that sees no GPU"
            raise LmforgeError(
                f"device {name!r}: CUDA is not available (PyTorch {torch.__version__} is {build}); "
                "install a CUDA build of torch >= 2.5 first, or use --device cpu"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise LmforgeError(f"device {name!r}: MPS is not available on this machine; use --device cpu")
        if dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def degrees(cfg: ParallelConfig) -> dict[str, int]:
    return {"pp": cfg.pp, "dp_replicate": cfg.dp_replicate, "dp_shard": cfg.dp_shard, "tp": cfg.tp}


def check_degrees(cfg: ParallelConfig, world_size: int) -> None:
    """The four degrees must be positive and multiply to the world size; clear error otherwise."""
    d = degrees(cfg)
    for name, value in d.items():
        if value < 1:
            raise LmforgeError(f"parallel.{name} must be >= 1, got {value}")
    product = cfg.pp * cfg.dp_replicate * cfg.dp_shard * cfg.tp
    if product != world_size:
        layout = " x ".join(f"{k}={v}" for k, v in d.items())
        raise LmforgeError(
            f"parallel degrees {layout} multiply to {product} "
            f"but the world size (WORLD_SIZE) is {world_size}; "
            f"set them so that pp x dp_replicate x dp_shard x tp = {world_size} "
            f"(e.g. --parallel.dp_shard {world_size} for FSDP over every rank)"
        )
    if cfg.pp > 1 and cfg.pp_microbatches < cfg.pp:
        raise LmforgeError(
            f"parallel.pp_microbatches ({cfg.pp_microbatches}) must be >= parallel.pp ({cfg.pp})"
        )


def setup_distributed(cfg: ParallelConfig, device: str = "auto") -> DistContext:
    """Join the process group torchrun set up (env:// rendezvous) and build the world mesh.

    Without WORLD_SIZE (a plain `python`/`lmforge` launch) this is the single-process context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_degrees(cfg, world)
    dev = pick_device(device)
    if world == 1:
        return DistContext(device=dev)
    from torch.distributed.device_mesh import init_device_mesh

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    init_process_group(device)
    shape = tuple(degrees(cfg).values())
    mesh = init_device_mesh(dev.type, shape, mesh_dim_names=MESH_DIMS)
    rep, shard = mesh["dp_replicate"].get_local_rank(), mesh["dp_shard"].get_local_rank()
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        dp_rank=rep * cfg.dp_shard + shard,
        dp_size=cfg.dp_replicate * cfg.dp_shard,
        device=dev,
        mesh=mesh,
        tp_size=cfg.tp,
        pp_rank=mesh["pp"].get_local_rank(),
        pp_size=cfg.pp,
    )


def init_process_group(device: str = "auto") -> None:
    """Join torchrun's process group now (setup_distributed does it too; this is for work that
    must be coordinated before the mesh exists, like `main_process_first`)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dev = pick_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "cuda:nccl,cpu:gloo" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


@contextlib.contextmanager
def main_process_first(device: str = "auto") -> Iterator[None]:
    """Under torchrun, rank 0 runs the body first (e.g. data and tokenizer stages), the other
    ranks wait and then run it too (finding the work done). A no-op in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    import torch.distributed as dist

    init_process_group(device)
    if dist.get_rank() != 0:
        dist.barrier()
    yield
    if dist.get_rank() == 0:
        dist.barrier()


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- the plan
