"""The parallel plan applied to a built model: tensor/sequence parallel, activation checkpointing,
FSDP2 or DDP, and loss parallelism (torchtitan's order; see `lmforge.distributed`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.loss_parallel import uses_loss_parallel
from lmforge.distributed.mesh import DistContext
from lmforge.distributed.pipeline import split_for_pipeline
from lmforge.errors import LmforgeError


def parallelize(
    model: nn.Module,
    cfg: ParallelConfig,
    ctx: DistContext,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    mixed_precision: bool | None = None,
    loss_parallel: bool | None = None,
) -> nn.Module:
    """Apply pipeline split -> TP -> AC -> compile -> FSDP/DDP to a built model, keeping its weights.

    Returns the same module (parallelised in place; names and class unchanged).
    `mixed_precision` (default: on for CUDA) gives FSDP bf16 parameters and fp32 reductions.
    `loss_parallel` (default: `uses_loss_parallel`) makes the model return vocabulary-sharded
    DTensor logits, for a loss computed inside `loss_parallel_context`; the trainer passes False
    for objectives other than the causal LM (DPO, reward, RL read the logits themselves).
    """
    if loss_parallel is None:
        loss_parallel = uses_loss_parallel(cfg, ctx)
    if ctx.pp_size > 1:
        split_for_pipeline(model, ctx.pp_rank, ctx.pp_size)
    if ctx.tp_size > 1:
        apply_tp(model, ctx.submesh("tp"), loss_parallel=loss_parallel)
    if activation_checkpointing:
        apply_ac(model)
    if compile:
        for block in model.layers.values():
            block.compile()
    if mixed_precision is None:
        mixed_precision = ctx.device.type == "cuda"
    if cfg.cpu_offload and cfg.dp_shard == 1:
        raise LmforgeError("parallel.cpu_offload offloads FSDP2 shards: it needs parallel.dp_shard > 1")
    # Replicas next to TP or PP are replicated FSDP2 (HSDP with shard size 1): DDP's reducer knows
    # neither DTensor parameters nor a pipeline schedule's several forwards per backward.
    if cfg.dp_shard > 1 or (cfg.dp_replicate > 1 and (ctx.tp_size > 1 or ctx.pp_size > 1)):
        dp_mesh = ctx.submesh("dp_replicate", "dp_shard") if cfg.dp_replicate > 1 else ctx.submesh("dp_shard")
        reshard = cfg.reshard_after_forward and ctx.pp_size == 1
        apply_fsdp(
            model, dp_mesh, mixed_precision, reshard_after_forward=reshard, cpu_offload=cfg.cpu_offload
        )
    elif cfg.dp_replicate > 1:
        model = apply_ddp(model, ctx)
    return model


def apply_tp(model: nn.Module, tp_mesh, loss_parallel: bool = False) -> None:
    """Tensor + sequence parallelism over `tp_mesh` (REFERENCE.md §4's table).

    Between blocks the residual stream is sharded along the sequence (Shard(1)); attention and
    MLP inputs are all-gathered, their inner projections split by heads / hidden units, and their
    output projections reduce-scatter back to sequence shards. Heads and n_kv_head must divide by tp.
    QK-norm gains are replicated over the head-sharded queries and keys.
    The head's logits are a DTensor sharded on the vocabulary (Shard(-1)) with `loss_parallel`,
    otherwise gathered into a plain tensor.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    cfg = model.cfg
    if cfg.value_embeds:
        raise LmforgeError(
            "tensor parallelism does not support model.value_embeds (each rank would learn the "
            "value embeddings' gains from its own heads alone): set model.value_embeds: 0"
        )
    tp = tp_mesh.size()
    for name, n in (("n_head", cfg.n_head), ("n_kv_head", cfg.n_kv_head), ("d_ff", cfg.d_ff)):
        if n % tp:
            raise LmforgeError(f"tensor parallel degree {tp} must divide model.{name} ({n})")
    tied = cfg.tie_embeddings and model.tok_emb is not None and model.lm_head is not None
    top: dict[str, Any] = {}
    if model.tok_emb is not None:
        top["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.pos_emb is not None:
        top["pos_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.norm is not None:
        top["norm"] = SequenceParallel()
    if model.lm_head is not None:
        top["lm_head"] = ColwiseParallel(
            input_layouts=Shard(1),
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        )
    parallelize_module(model, tp_mesh, top)
    if model.tok_emb is None and len(model.layers):
        # A later pipeline stage receives the previous stage's sequence shard (pipeline peers share
        # the tp coordinate). Gather it so the model sees the whole sequence (positions, rotary
        # tables), then hand the first block its shard again.
        parallelize_module(
            model,
            tp_mesh,
            PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
            ),
        )
        parallelize_module(
            next(iter(model.layers.values())),
            tp_mesh,
            PrepareModuleInput(
                input_layouts=(Replicate(), None, None, None, None, None),
                desired_input_layouts=(Shard(1), None, None, None, None, None),
                use_local_output=True,
            ),
        )
    if tied:  # row-wise embedding and column-wise head both shard the [vocab, d] matrix on dim 0
        model.lm_head.weight = model.tok_emb.weight
    gpt2 = cfg.arch == "gpt2"
    for block in model.layers.values():
        plan = {
            "attn_norm": SequenceParallel(),
            # attn(x, rope, cache, start_pos, attn_mask, value_embed): only x is redistributed
            "attn": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None, None, None),
                desired_input_layouts=(Replicate(), None, None, None, None, None),
            ),
            "attn.wq": ColwiseParallel(),
            "attn.wk": ColwiseParallel(),
            "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        }
        if gpt2:
            plan.update({"mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel(output_layouts=Shard(1))})
        else:
            plan.update(
                {
                    "mlp.w1": ColwiseParallel(),
                    "mlp.w3": ColwiseParallel(),
                    "mlp.w2": RowwiseParallel(output_layouts=Shard(1)),
                }
            )
        if cfg.qk_norm:
            # One [head_dim] gain for every head, while each rank holds a slice of the heads
            # ([B, H/tp, T, D]): as replicated DTensors over head-sharded inputs their gradients
            # are summed over the tensor-parallel ranks, so the copies stay equal.
            heads = SequenceParallel(sequence_dim=1, use_local_output=True)
            plan.update({"attn.q_norm": heads, "attn.k_norm": heads})
        parallelize_module(block, tp_mesh, plan)


def apply_ac(model: nn.Module) -> None:
    """Full activation checkpointing per block: keep only each block's input, recompute the rest
    in backward. Done by replacing the block's forward (not wrapping the module) so parameter
    names, and with them checkpoints, do not change."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers.values():
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # evaluation and generation: nothing to save
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


# the Transformer's own children; anything else on the model was added by a stage (`extend`)
TRANSFORMER_PARTS = ("tok_emb", "pos_emb", "value_embeds", "layers", "norm", "lm_head")


def apply_fsdp(
    model: nn.Module,
    dp_mesh,
    mixed_precision: bool,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> None:
    """FSDP2: `fully_shard` every block, then the root (embeddings, final norm, head).

    A 2-D (dp_replicate, dp_shard) mesh gives HSDP. On GPU the policy keeps bf16 parameters for
    compute and reduces gradients in fp32; the sharded fp32 master weights stay with the optimizer.
    `cpu_offload` keeps the shards (and so the gradients and the optimizer state) in host memory,
    copied to the device for each block's forward and backward, and steps the optimizer on the CPU.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else None
    )
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for name, child in model.named_children():
        if name not in TRANSFORMER_PARTS:  # e.g. the reward model's value head, called outside forward()
            fully_shard(child, **kwargs)
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once in backward: keep them gathered
        fully_shard(
            block, **{**kwargs, "reshard_after_forward": reshard_after_forward and i < len(blocks) - 1}
        )
    fully_shard(model, **kwargs)


def apply_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP through the composable `replicate` (torchtitan's choice): the module keeps its class
    and parameter names, gradients are all-reduced in buckets during backward."""
    from torch.distributed._composable.replicate import replicate

    return replicate(model, device_mesh=ctx.submesh("dp_replicate"), bucket_cap_mb=100)


def set_grad_sync(model: nn.Module, enabled: bool) -> None:
    """Gradient accumulation without communication: under DDP the all-reduce is skipped for all
    but the last micro-batch of a step (gradients just add up locally). FSDP keeps its
    reduce-scatter on every micro-batch: skipping it would hold unsharded gradients."""
    from torch.distributed._composable.replicate import DDP

    if isinstance(model, DDP):
        model.set_requires_gradient_sync(enabled)


# ---------------------------------------------------------------------------- building


def build_parallel_model(
    model_cfg,
    cfg: ParallelConfig,
    ctx: DistContext,
    seed: int = 0,
    init_from: Path | None = None,
    extend: Callable[[nn.Module], Any] | None = None,
    **plan,
) -> nn.Module:
    """The one way a training stage builds its model: the Transformer on the meta device, the plan
    applied (`parallelize`), then only this rank's shards allocated on ctx.device and filled, so no
    rank ever holds the full unsharded model (what a 70B run needs).

    Fresh (`init_from` None): the weights equal `torch.manual_seed(seed); Transformer(model_cfg)`
    in one process, bit for bit, whatever the layout (`lmforge.distributed.materialize`), and the
    global generator ends in the state that build leaves. From a checkpoint: its weights, read
    shard by shard (`load_weights_sharded`). `extend(model)` adds modules the stage trains with the
    model (the reward model's value head, LoRA adapters) before the plan; theirs are always freshly
    initialised, and they are told from the model's own by parameter identity, not name, so an
    `extend` that wraps the model's modules (peft) still gets its base weights from the checkpoint
    alone, with no random initialisation first. `plan` goes to `parallelize`.
    """
    from lmforge.checkpoint.consolidated import load_weights_sharded
    from lmforge.distributed.materialize import build_on_meta, materialize, replay
    from lmforge.model.transformer import Transformer

    def build() -> nn.Module:
        model = Transformer(model_cfg)
        base.update(id(p) for p in model.parameters())
        if extend is not None:
            extend(model)
        return model

    # The Transformer's own parameters, by identity: `extend` may move them under a new name (peft
    # keeps a wrapped Linear as `base_layer`, so `wq.weight` becomes `wq.base_layer.weight`), but
    # the tensors stay the same, and the checkpoint fills them whatever they are called now.
    base: set[int] = set()
    torch.manual_seed(seed)
    model, recipes = build_on_meta(build)
    added = {name for name, p in model.named_parameters() if id(p) not in base}
    model = parallelize(model, cfg, ctx, **plan)
    materialize(model, ctx.device, host_shards=cfg.cpu_offload)
    if init_from is None:
        replay(model, recipes)
    else:
        replay(model, recipes, added)
        load_weights_sharded(model, Path(init_from), skip=added)
    return model


# ---------------------------------------------------------------------------- pipeline
