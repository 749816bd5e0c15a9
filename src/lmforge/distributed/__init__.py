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

import importlib
from typing import Any

# name -> submodule, imported on first use: `lmforge.distributed.config` (which every recipe reads,
# and so every verb's --help) must not pull in torch. No submodule shares a name with what it exports.
_NAMES = {
    "agree": "collectives",
    "all_reduce_mean": "collectives",
    "all_reduce_sum": "collectives",
    "barrier": "collectives",
    "clip_grad_norm_": "collectives",
    "run_on_main": "collectives",
    "ParallelConfig": "config",
    "loss_parallel_context": "loss_parallel",
    "uses_loss_parallel": "loss_parallel",
    "MESH_DIMS": "mesh",
    "DistContext": "mesh",
    "check_degrees": "mesh",
    "degrees": "mesh",
    "init_process_group": "mesh",
    "main_process_first": "mesh",
    "pick_device": "mesh",
    "setup_distributed": "mesh",
    "teardown_distributed": "mesh",
    "apply_ac": "parallel_plan",
    "apply_ddp": "parallel_plan",
    "apply_fsdp": "parallel_plan",
    "apply_tp": "parallel_plan",
    "build_parallel_model": "parallel_plan",
    "parallelize": "parallel_plan",
    "set_grad_sync": "parallel_plan",
    "Pipeline": "pipeline",
    "split_for_pipeline": "pipeline",
    "stage_layers": "pipeline",
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'lmforge.distributed' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lmforge.distributed.{_NAMES[name]}"), name)


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
