"""Build a model on the meta device and initialise it, once sharded, exactly as a single process
would have: every rank allocates only its own shards, yet the weights are bit-identical to
`torch.manual_seed(seed); Transformer(cfg)` on one CPU, whatever the layout.

How: the meta build runs under `InitRecorder`, which sees every in-place op on a meta tensor
(the constructors' default inits, then `init_weights`). For each tensor it keeps the ops since
the last one that overwrote it whole (a random fill, `zero_`, `fill_`), with the CPU generator's
state before each random op, and it runs each random op on a CPU scratch tensor of the same
shape, so the generator advances exactly as in a real build. Once the plan is applied and the
shards allocated, `replay` regenerates one full parameter at a time from its recorded ops and
keeps this rank's slice: peak memory is the rank's shards plus the largest single tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from lmforge.checkpoint.consolidated import fill_local_shards
from lmforge.errors import LmforgeError

OVERWRITES = (torch.ops.aten.zero_.default, torch.ops.aten.fill_.Scalar)


@dataclass
class InitOp:
    func: Any  # an in-place aten op
    args: tuple  # its arguments after the tensor itself (scalars only)
    kwargs: dict
    rng_state: torch.Tensor | None  # the CPU generator's state before a random op


class InitRecorder(TorchDispatchMode):
    """Records, per meta tensor, the in-place ops that give it its initial value (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[int, list[InitOp]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else None
        in_place = func._schema.name.endswith("_") and isinstance(target, torch.Tensor) and target.is_meta
        if not in_place:
            return func(*args, **kwargs)
        random = torch.Tag.nondeterministic_seeded in func.tags
        state = torch.get_rng_state() if random else None
        if random:  # advance the generator exactly as the real op would
            func(torch.empty(target.shape, dtype=target.dtype, device="cpu"), *args[1:], **kwargs)
        op = InitOp(func, tuple(args[1:]), dict(kwargs), state)
        if random or func in OVERWRITES:
            self.ops[id(target)] = [op]
        else:
            self.ops.setdefault(id(target), []).append(op)
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, list[InitOp]]]:
    """(the module `build()` makes, on the meta device; each parameter's recorded init ops by name)."""
    recorder = InitRecorder()
    with torch.device("meta"), recorder:
        model = build()
    recipes = {name: recorder.ops.get(id(p), []) for name, p in model.named_parameters()}
    for name, ops in recipes.items():
        if not ops or any(isinstance(a, torch.Tensor) for op in ops for a in op.args):
            raise LmforgeError(f"{name}: its initialisation cannot be replayed shard by shard")
    return model, recipes


def regenerate(shape: torch.Size, dtype: torch.dtype, ops: list[InitOp]) -> torch.Tensor:
    """The full tensor a single-process build would have initialised (on the CPU)."""
    full = torch.empty(shape, dtype=dtype, device="cpu")
    for op in ops:
        if op.rng_state is not None:
            torch.set_rng_state(op.rng_state)
        op.func(full, *op.args, **op.kwargs)
    return full


def replay(model: nn.Module, recipes: dict[str, list[InitOp]], names: set[str] | None = None) -> None:
    """Fill every (sharded) parameter, or those in `names`, with its slice of the single-process
    initial value, one full tensor at a time; the generator's state is left as it was."""
    params = dict(model.named_parameters())

    def read(name: str, index: tuple[slice, ...]) -> torch.Tensor:
        param = params[name]
        return regenerate(param.shape, param.dtype, recipes[name])[index]

    with torch.random.fork_rng(devices=[]):
        fill_local_shards(model, read, names)


def materialize(model: nn.Module, device: torch.device, host_shards: bool = False) -> None:
    """Allocate this rank's shards (on the CPU with `host_shards`: FSDP2 CPU offload) and compute
    the buffers; parameter values are left for `replay` or a checkpoint load.

    `init_weights` is the one place the model computes its buffers (RoPE frequencies); it also
    draws parameter values, under a forked generator here, which the caller then overwrites."""
    tied = shared_parameters(model)
    model.to_empty(device=torch.device("cpu") if host_shards else device)
    for (owner, name), *others in tied:  # to_empty gives every module its own new tensor
        for module, attr in others:
            if getattr(module, attr) is not getattr(owner, name):
                module.register_parameter(attr, getattr(owner, name))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model.init_weights()
    if host_shards:
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                setattr(module, name, buf.to(device))


def shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """The (module, attribute) pairs of every parameter registered in more than one place (a tied
    LM head), the first being where `named_parameters` reports it."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            places.setdefault(id(param), []).append((module, name))
    return [group for group in places.values() if len(group) > 1]
