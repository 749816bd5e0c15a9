"""Parallelism: the process group, the DeviceMesh, and the plan applied to a built model.

The model file never imports this; the trainer calls `setup_distributed` once and `parallelize`
on the model it built (torchtitan's split). Single-process runs get a DistContext of world size 1
and the model unchanged.

Mesh: one world mesh with named dims ("pp", "dp_replicate", "dp_shard", "tp"), in that order
(tensor parallel innermost, so its collectives stay inside a node). Their product must equal
WORLD_SIZE. What each dim does:

- dp_shard > 1: FSDP2 `fully_shard` per transformer block, then the root (bf16 params / fp32
  reductions on GPU). With dp_replicate > 1 too it is HSDP (shard inside a group, replicate
  across groups) on the 2-D (dp_replicate, dp_shard) mesh.
- dp_replicate > 1 alone: DDP (or replicated FSDP2, i.e. HSDP with shard size 1, under TP or PP).
- tp > 1: DTensor tensor parallelism with sequence parallelism (the torchtitan plan: embedding
  row-wise with a sequence-sharded output, norms `SequenceParallel`, q/k/v and gate/up
  column-wise, o and down row-wise, the LM head column-wise). With loss parallelism (the
  default, `uses_loss_parallel`) the head's logits stay a DTensor sharded over the vocabulary
  and the cross-entropy runs on the shards inside `loss_parallel_context`; otherwise the head
  gathers the full logits.
- pp > 1: `split_for_pipeline` keeps this rank's contiguous slice of layers (the first stage
  keeps the embeddings, the last the final norm and head; layer names and so checkpoint keys stay
  the same) and `Pipeline` drives a GPipe or 1F1B schedule over microbatches.

Order, as torchtitan: build (on the meta device for big models) -> pipeline split -> tensor
parallel -> activation checkpointing -> compile -> FSDP/DDP -> materialise and init weights
(`build_parallel_model` does all of it; `parallelize` does the middle on an already built model,
keeping its weights, which is what the parity tests and small runs use).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from lmforge.errors import LmforgeError
from lmforge.train.config import ParallelConfig

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
    if name != "auto":
        if name == "cuda" and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(name)
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
            f"parallel degrees {layout} multiply to {product} but the world size (WORLD_SIZE) is {world_size}; "
            f"set them so that pp x dp_replicate x dp_shard x tp = {world_size} "
            f"(e.g. --parallel.dp_shard {world_size} for FSDP over every rank)"
        )
    if cfg.pp > 1 and cfg.pp_microbatches < cfg.pp:
        raise LmforgeError(f"parallel.pp_microbatches ({cfg.pp_microbatches}) must be >= parallel.pp ({cfg.pp})")


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


def uses_loss_parallel(cfg: ParallelConfig, ctx: DistContext, objective: Any = None) -> bool:
    """Whether the LM head keeps its logits sharded over the vocabulary: `parallel.loss_parallel`
    under tensor parallelism (with pipeline stages too: the last stage's loss runs on the shards),
    for an objective that declares it takes sharded logits (`loss_parallel = True`, as
    `CausalLMObjective`); other objectives read the logits themselves and get them whole."""
    takes_shards = objective is None or getattr(objective, "loss_parallel", False)
    return cfg.loss_parallel and ctx.tp_size > 1 and takes_shards


def loss_parallel_context(enabled: bool) -> contextlib.AbstractContextManager:
    """`torch.distributed.tensor.parallel.loss_parallel()` when enabled: cross-entropy (and its
    backward, which must run inside too) on vocabulary-sharded DTensor logits, computing the
    softmax normaliser with two small all-reduces instead of gathering [B, T, vocab]."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


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
    # Replicas next to TP or PP are replicated FSDP2 (HSDP with shard size 1): DDP's reducer knows
    # neither DTensor parameters nor a pipeline schedule's several forwards per backward.
    if cfg.dp_shard > 1 or (cfg.dp_replicate > 1 and (ctx.tp_size > 1 or ctx.pp_size > 1)):
        dp_mesh = ctx.submesh("dp_replicate", "dp_shard") if cfg.dp_replicate > 1 else ctx.submesh("dp_shard")
        apply_fsdp(model, dp_mesh, mixed_precision, reshard_after_forward=ctx.pp_size == 1)
    elif cfg.dp_replicate > 1:
        model = apply_ddp(model, ctx)
    return model


def apply_tp(model: nn.Module, tp_mesh, loss_parallel: bool = False) -> None:
    """Tensor + sequence parallelism over `tp_mesh` (REFERENCE.md §4's table).

    Between blocks the residual stream is sharded along the sequence (Shard(1)); attention and
    MLP inputs are all-gathered, their inner projections split by heads / hidden units, and their
    output projections reduce-scatter back to sequence shards. Heads and n_kv_head must divide by tp.
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
        parallelize_module(model, tp_mesh, PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True))
        parallelize_module(next(iter(model.layers.values())), tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None, None),
            desired_input_layouts=(Shard(1), None, None, None, None), use_local_output=True))
    if tied:  # row-wise embedding and column-wise head both shard the [vocab, d] matrix on dim 0
        model.lm_head.weight = model.tok_emb.weight
    gpt2 = cfg.arch == "gpt2"
    for block in model.layers.values():
        plan = {
            "attn_norm": SequenceParallel(),
            # attn(x, rope, cache, start_pos, attn_mask): only x is redistributed
            "attn": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None, None),
                desired_input_layouts=(Replicate(), None, None, None, None),
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


def apply_fsdp(model: nn.Module, dp_mesh, mixed_precision: bool, reshard_after_forward: bool = True) -> None:
    """FSDP2: `fully_shard` every block, then the root (embeddings, final norm, head).

    A 2-D (dp_replicate, dp_shard) mesh gives HSDP. On GPU the policy keeps bf16 parameters for
    compute and reduces gradients in fp32; the sharded fp32 master weights stay with the optimizer.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once in backward: keep them gathered
        fully_shard(block, **{**kwargs, "reshard_after_forward": reshard_after_forward and i < len(blocks) - 1})
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


def build_parallel_model(model_cfg, cfg: ParallelConfig, ctx: DistContext, seed: int = 0, **plan) -> nn.Module:
    """Build the Transformer on the meta device, apply the plan, then materialise on ctx.device
    and initialise: no rank ever holds the full unsharded model (what a 70B run needs).

    Initial weights are seeded but, once sharded, not bit-identical to a single-process build
    (each shard draws its own numbers); start from a checkpoint where that matters.
    """
    from lmforge.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(model_cfg)
    model = parallelize(model, cfg, ctx, **plan)
    model.to_empty(device=ctx.device)
    torch.manual_seed(seed + ctx.pp_rank)
    with torch.no_grad():
        model.init_weights()
    return model


# ---------------------------------------------------------------------------- pipeline


def stage_layers(n_layer: int, pp_rank: int, pp_size: int) -> list[int]:
    """The contiguous layer indices stage `pp_rank` owns (earlier stages take the remainder)."""
    if n_layer < pp_size:
        raise LmforgeError(f"pipeline degree {pp_size} exceeds model.n_layer ({n_layer})")
    base, extra = divmod(n_layer, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return list(range(start, start + base + (1 if pp_rank < extra else 0)))


def split_for_pipeline(model: nn.Module, pp_rank: int, pp_size: int) -> None:
    """Keep only this stage's layers (and the embeddings on the first, norm + head on the last)."""
    if model.cfg.tie_embeddings:
        raise LmforgeError(
            "pipeline parallelism needs untied embeddings (the embedding and the head live on different "
            "stages): set model.tie_embeddings: false"
        )
    keep = {str(i) for i in stage_layers(model.cfg.n_layer, pp_rank, pp_size)}
    for name in list(model.layers.keys()):
        if name not in keep:
            del model.layers[name]
    if pp_rank > 0:
        model.tok_emb = None
        model.pos_emb = None
    if pp_rank < pp_size - 1:
        model.norm = None
        model.lm_head = None


class Pipeline:
    """One training step of a pipeline-parallel stage: `step(input_ids, labels) -> mean loss`.

    Feeds `n_microbatches` microbatches through a GPipe or 1F1B schedule. The loss of each
    microbatch is its summed token cross-entropy divided by the token count of the whole batch,
    and the schedule does not rescale gradients, so the gradient is that of the exact token mean
    (as in the single-process loop). The returned loss is broadcast to every rank. Under loss
    parallelism the last stage's logits are vocabulary shards and the schedule runs inside
    `loss_parallel_context`.
    """

    def __init__(self, model: nn.Module, cfg: ParallelConfig, ctx: DistContext, micro_batch: int, seq_len: int):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.ctx = ctx
        self.group = ctx.submesh("pp").get_group()
        self.n_micro, self.micro_batch = cfg.pp_microbatches, micro_batch
        if micro_batch % self.n_micro:
            raise LmforgeError(
                f"train.micro_batch ({micro_batch}) must divide into parallel.pp_microbatches ({self.n_micro})"
            )
        self._count = torch.ones((), device=ctx.device)
        self._eval_nll: list[torch.Tensor] | None = None  # per-token nll of each microbatch, in eval_sums
        # the schedule runs the loss and its backward: under loss parallelism both on vocabulary shards
        self.loss_parallel = uses_loss_parallel(cfg, ctx)
        stage = PipelineStage(model, ctx.pp_rank, ctx.pp_size, ctx.device, group=self.group)
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg.pp_schedule]
        self.schedule = cls(stage, self.n_micro, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from lmforge.train.objectives import replicated_value, token_nll

        if self._eval_nll is not None:
            nll = token_nll(logits, labels)
            self._eval_nll.append(nll)
            return nll.sum()
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        return replicated_value(ce) / self._count

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
        """Forward + backward of one batch; the loss is sum(CE) / denominator (default: the
        batch's token count, i.e. the mean; the trainer passes 1 to get the sum it rescales)."""
        import torch.distributed as dist

        if denominator is None:
            self._count = (labels != -100).sum().clamp(min=1).to(self.ctx.device)
        else:
            self._count = torch.tensor(float(denominator), device=self.ctx.device)
        losses: list[torch.Tensor] = []
        with loss_parallel_context(self.loss_parallel):
            if self.ctx.is_first_stage:
                self.schedule.step(input_ids.to(self.ctx.device), target=labels.to(self.ctx.device), losses=losses)
            else:
                self.schedule.step(target=labels.to(self.ctx.device), losses=losses)
        total = torch.stack(losses).sum().detach() if losses else torch.zeros((), device=self.ctx.device)
        dist.all_reduce(total, group=self.group)  # only the last stage contributes
        return total


    @torch.no_grad()
    def eval_sums(
        self, input_ids: torch.Tensor, labels: torch.Tensor, token_bytes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Validation sums of a batch (`objectives.nll_byte_sums`: nll, tokens, and the nll and
        bytes for bits per byte), forward only, the same on every stage. The last stage keeps
        each microbatch's per-token nll; in schedule order they make up the batch's [B, T].
        A batch of another size than the training micro-batch (the stages' buffers are shaped for
        it) is skipped: zeros."""
        import torch.distributed as dist

        from lmforge.train.objectives import nll_byte_sums

        sums = torch.zeros(4, dtype=torch.float64, device=self.ctx.device)
        if input_ids.shape[0] != self.micro_batch:
            return sums
        labels = labels.to(self.ctx.device)
        self._eval_nll = []
        try:
            with loss_parallel_context(self.loss_parallel):
                if self.ctx.is_first_stage:
                    self.schedule.eval(input_ids.to(self.ctx.device), target=labels, losses=[])
                else:
                    self.schedule.eval(target=labels, losses=[])
            if self._eval_nll:
                sums = nll_byte_sums(torch.cat(self._eval_nll).view(labels.shape), labels, token_bytes)
        finally:
            self._eval_nll = None
        dist.all_reduce(sums, group=self.group)  # only the last stage contributes
        return sums


# ---------------------------------------------------------------------------- collectives


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
