"""Loss parallelism: cross-entropy on vocabulary-sharded logits under tensor parallelism."""

from __future__ import annotations

import contextlib

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.mesh import DistContext


def uses_loss_parallel(cfg: ParallelConfig, ctx: DistContext, takes_sharded_logits: bool = True) -> bool:
    """Whether the LM head keeps its logits sharded over the vocabulary: `parallel.loss_parallel`
    under tensor parallelism (with pipeline stages too: the last stage's loss runs on the shards),
    for an objective that takes sharded logits (its `takes_sharded_logits`, as the causal LM
    objective of pretraining and SFT); other objectives read the logits themselves and get them
    whole."""
    return cfg.loss_parallel and ctx.tp_size > 1 and takes_sharded_logits


def loss_parallel_context(enabled: bool) -> contextlib.AbstractContextManager:
    """`torch.distributed.tensor.parallel.loss_parallel()` when enabled: cross-entropy (and its
    backward, which must run inside too) on vocabulary-sharded DTensor logits, computing the
    softmax normaliser with two small all-reduces instead of gathering [B, T, vocab]."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()
