"""Collectives the trainer needs over a DistContext: gradient clipping, reductions, barriers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from lmforge.distributed.mesh import DistContext


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, ctx: DistContext) -> torch.Tensor:
    """Clip by the global gradient norm across every shard, tensor slice and pipeline stage.

    Returns the (pre-clipping) total norm as a plain tensor. Equivalent to
    `torch.nn.utils.clip_grad_norm_` on the unsharded model.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros(())
    by_mesh: dict[Any, list[torch.Tensor]] = {}
    for g in grads:  # DTensor norms reduce per mesh; group so each group is homogeneous
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        by_mesh.setdefault(key, []).append(g)
    sq = torch.zeros((), device=grads[0].device, dtype=torch.float32)
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type=2.0, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        sq = sq + norm.float() ** 2
    if ctx.pp_size > 1:
        dist.all_reduce(sq, group=ctx.submesh("pp").get_group())
    total = sq.sqrt()
    if max_norm > 0:
        by_device: dict[Any, list[nn.Parameter]] = {}
        for p in params:
            key = (p.grad.device_mesh, tuple(p.grad.placements)) if isinstance(p.grad, DTensor) else None
            by_device.setdefault(key, []).append(p)
        for group in by_device.values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total


def all_reduce_mean(value: float | torch.Tensor, ctx: DistContext) -> float:
    """Mean of a scalar over all ranks (for logging); the value itself single-process."""
    if not ctx.distributed:
        return float(value)
    import torch.distributed as dist

    t = torch.as_tensor(value, dtype=torch.float64, device=ctx.device).clone()
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def all_reduce_sum(value: float | torch.Tensor, ctx: DistContext) -> float:
    if not ctx.distributed:
        return float(value)
    import torch.distributed as dist

    t = torch.as_tensor(value, dtype=torch.float64, device=ctx.device).clone()
    dist.all_reduce(t)
    return float(t)


def agree(value: float, ctx: DistContext) -> float:
    """Rank 0's value on every rank (clocks: a time budget must stop all ranks at the same step)."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def run_on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only, then wait for it on every rank."""
    out = fn() if ctx.is_main else None
    barrier(ctx)
    return out
