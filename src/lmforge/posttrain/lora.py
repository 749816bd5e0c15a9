"""LoRA for the post-training stages (`sft.lora`, `dpo.lora`): low-rank adapters injected by peft into
lmforge's own Transformer, the rest of the model frozen.

`peft.inject_adapter_in_model` wraps each targeted nn.Linear in peft's LoRA layer (the Linear kept as
`base_layer`, the adapters as `lora_A` / `lora_B`, B zero so training starts from the base model
exactly) and freezes every other parameter, so the optimizer sees the adapters only
(`train.optim.param_roles` takes trainable parameters only). The adapters are added on the meta
device before the parallel plan (`build_parallel_model`'s `extend`), so FSDP2 shards and DDP
replicates them like any parameter; tensor and pipeline parallelism are refused. The base weights
are then read from the starting checkpoint shard by shard (`build_parallel_model`'s `init_from`).

Checkpoints hold only the adapters and a pointer to the starting checkpoint (its path and a hash of
its weights): `lmforge.checkpoint.adapters`. Every loader of a model merges them into the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint.adapters import SPEC_ATTR, AdapterSpec, base_pointer
from lmforge.errors import LmforgeError
from lmforge.posttrain.config import LoRAConfig

ADAPTER = "default"  # peft's adapter name; the checkpoint's tensor names leave it out


def linear_modules(model: torch.nn.Module) -> list[str]:
    """The names of the nn.Linear modules inside the transformer blocks (what adapters may target)."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("layers.")]


def target_modules(model: torch.nn.Module, targets: list[str], where: str = "lora.targets") -> list[str]:
    """The block linear modules `targets` names, matched as peft matches target_modules (the whole
    name or a dotted suffix of it: wq, attn.wq, layers.0.attn.wq); a target that matches nothing is
    refused with the names that exist."""
    linears = linear_modules(model)
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linears)]
    if unknown:
        short = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linears))
        raise LmforgeError(
            f"{where}: {', '.join(repr(t) for t in unknown)} name(s) no linear module of this model; "
            f"its block linear modules are {', '.join(short)} (e.g. {linears[0]})"
        )
    return [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]


def add_adapters(model: torch.nn.Module, cfg: LoRAConfig, base: dict, where: str = "lora") -> list[str]:
    """Inject LoRA adapters into `model` (in place, on whatever device it is built), freeze the rest,
    and attach the `AdapterSpec` its checkpoints are written from. Returns the adapted module names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise LmforgeError(
            f"{where}.rank > 0 needs the `peft` package: pip install 'lmforge[lora]' (or pip install peft)"
        ) from None

    modules = target_modules(model, cfg.targets, f"{where}.targets")
    peft_cfg = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules, bias="none"
    )
    inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    params = {}
    for m in modules:
        for x in ("A", "B"):
            params[f"{m}.lora_{x}.weight"] = f"{m}.lora_{x}.{ADAPTER}.weight"
    names = set(params.values())
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    info = {
        "type": "lora",
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "dropout": cfg.dropout,
        "targets": list(cfg.targets),
        "modules": modules,
        "base": base,
    }
    setattr(model, SPEC_ATTR, AdapterSpec(info, params))
    return modules


def build_lora_model(
    ckpt: Path,
    model_cfg,
    cfg: LoRAConfig,
    parallel_cfg,
    ctx,
    *,
    seed: int,
    extend=None,
    where: str,
    **plan: Any,
) -> torch.nn.Module:
    """The stage's model with adapters: `build_parallel_model` from checkpoint `ckpt`, with the
    adapters injected on the meta device (its `extend`), the recipe's parallel plan applied, the
    adapters initialised as peft does (the same values on every layout), and the base weights read
    once, shard by shard, with no random initialisation first (with `ckpt`'s own adapters merged in
    when it is an adapter checkpoint). peft renames the weights it wraps (`wq.weight` ->
    `wq.base_layer.weight`); `build_parallel_model` tells added parameters by identity, and the
    sliced reader maps the names back (`lmforge.checkpoint.adapters.checkpoint_name`)."""
    from lmforge.checkpoint.consolidated import weights_file
    from lmforge.distributed import build_parallel_model, main_process_first

    if ctx.tp_size > 1 or ctx.pp_size > 1:
        raise LmforgeError(
            f"{where}: LoRA runs under data parallelism (parallel.dp_replicate / dp_shard), not under "
            f"tensor or pipeline parallelism (parallel.tp {ctx.tp_size}, parallel.pp {ctx.pp_size})"
        )
    with main_process_first(ctx.device.type):
        base = base_pointer(ckpt)
        _consolidate_chain(ckpt, weights_file)  # rank 0 first: the peft-wrapped model reads safetensors

    def extend_with_adapters(model: torch.nn.Module) -> None:
        if extend is not None:
            extend(model)
        add_adapters(model, cfg, base, where)

    return build_parallel_model(
        model_cfg, parallel_cfg, ctx, seed=seed, init_from=ckpt, extend=extend_with_adapters, **plan
    )


def _consolidate_chain(ckpt: Path, weights_file) -> None:
    """Give the full checkpoint at the root of an adapter chain its model.safetensors (from DCP shards)."""
    from lmforge.checkpoint.adapters import is_adapter_checkpoint, resolve_base

    while is_adapter_checkpoint(ckpt):
        ckpt = resolve_base(ckpt)
    weights_file(ckpt)


def describe(model: torch.nn.Module) -> str:
    """'LoRA rank r on N modules: T trainable parameters of P (x%)' for the stage's log."""
    spec = getattr(model, SPEC_ATTR)
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    total = sum(n for n, _ in seen.values())
    trainable = sum(n for n, t in seen.values() if t)
    return (
        f"LoRA rank {spec.info['rank']}, alpha {spec.info['alpha']:g} on {len(spec.info['modules'])} modules "
        f"({', '.join(spec.info['targets'])}): {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )
