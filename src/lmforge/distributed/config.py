"""The `parallel` recipe section: the layout of ranks under torchrun."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ParallelConfig:
    """Parallel layout under torchrun (lmforge.distributed); the product of the degrees is the world size."""

    dp_replicate: int = field(
        default=1, metadata={"help": "full replicas: DDP; HSDP replica groups with dp_shard"}
    )
    dp_shard: int = field(
        default=1, metadata={"help": "FSDP2: weights, grads, optimizer sharded over these ranks"}
    )
    tp: int = field(
        default=1, metadata={"help": "tensor + sequence parallel (divides n_head, n_kv_head, d_ff)"}
    )
    pp: int = field(default=1, metadata={"help": "pipeline stages (needs model.tie_embeddings false)"})
    pp_schedule: Literal["1f1b", "gpipe"] = "1f1b"  # pipeline schedule: 1F1B or GPipe
    pp_microbatches: int = field(
        default=4, metadata={"help": "pipeline microbatches (divide train.micro_batch)"}
    )
    reshard_after_forward: bool = field(
        default=True,
        metadata={
            "help": "FSDP2 frees gathered params after forward (ZeRO-3); false keeps them to backward "
            "(ZeRO-2: more memory, less communication); pipeline stages always keep them"
        },
    )
    cpu_offload: bool = field(
        default=False,
        metadata={
            "help": "FSDP2 CPUOffloadPolicy: sharded params, grads and optimizer state live in host memory "
            "(ZeRO-offload); needs dp_shard > 1"
        },
    )
    loss_parallel: bool = field(
        default=True,
        metadata={
            "help": "under tp > 1: cross-entropy on vocab-sharded logits, never gathered "
            "(causal LM objective)"
        },
    )
