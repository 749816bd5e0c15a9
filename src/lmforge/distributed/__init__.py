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

from lmforge.distributed.collectives import (
    agree,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    clip_grad_norm_,
    run_on_main,
)
from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.loss_parallel import loss_parallel_context, uses_loss_parallel
from lmforge.distributed.mesh import (
    MESH_DIMS,
    DistContext,
    check_degrees,
    degrees,
    init_process_group,
    main_process_first,
    pick_device,
    setup_distributed,
    teardown_distributed,
)
from lmforge.distributed.parallelize import (
    apply_ac,
    apply_ddp,
    apply_fsdp,
    apply_tp,
    build_parallel_model,
    parallelize,
    set_grad_sync,
)
from lmforge.distributed.pipeline import Pipeline, split_for_pipeline, stage_layers

__all__ = [
    "MESH_DIMS",
    "DistContext",
    "ParallelConfig",
    "Pipeline",
    "agree",
    "all_reduce_mean",
    "all_reduce_sum",
    "apply_ac",
    "apply_ddp",
    "apply_fsdp",
    "apply_tp",
    "barrier",
    "build_parallel_model",
    "check_degrees",
    "clip_grad_norm_",
    "degrees",
    "init_process_group",
    "loss_parallel_context",
    "main_process_first",
    "parallelize",
    "pick_device",
    "run_on_main",
    "set_grad_sync",
    "setup_distributed",
    "split_for_pipeline",
    "stage_layers",
    "teardown_distributed",
    "uses_loss_parallel",
]
