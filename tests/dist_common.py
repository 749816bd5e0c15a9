"""Shared by the distributed tests and their torchrun worker: a tiny model, a deterministic
batch stream and the training loop that every layout runs (and the single process as reference)."""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from lmforge.distributed import (
    DistContext,
    Pipeline,
    all_reduce_mean,
    all_reduce_sum,
    clip_grad_norm_,
    loss_parallel_context,
)
from lmforge.distributed.config import ParallelConfig
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.objectives import CausalLMObjective, nll_byte_sums, token_nll

GLOBAL_BATCH, SEQ, VOCAB = 8, 16, 64
LR = 1e-2
VAL_STEP = 10_000  # the held-out batch: batch(VAL_STEP)
# bytes per token id for bits per byte: 0 (a special token) to 3, as a byte-level tokenizer's table
TOKEN_BYTES = torch.tensor([i % 4 for i in range(VOCAB)], dtype=torch.float64)


def model_config(arch: str = "llama", tied: bool = False) -> ModelConfig:
    return ModelConfig(
        arch=arch, vocab_size=VOCAB, n_layer=4, d_model=32, n_head=4, n_kv_head=2 if arch == "llama" else 0,
        d_ff=64, max_seq_len=SEQ, tie_embeddings=tied,
    )


def build(arch: str = "llama", tied: bool = False, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(model_config(arch, tied))


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # eps 1e-5, not 1e-8: at initialisation the query/key gradients are tiny (attention logits are
    # near zero), and Adam divides them by their own magnitude, turning the rounding differences
    # of another reduction order into visible steps. With SGD every layout matches to 1e-6.
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-5)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def pipeline(model, ctx: DistContext, pcfg: ParallelConfig | None) -> Pipeline | None:
    return Pipeline(model, pcfg, ctx, GLOBAL_BATCH // ctx.dp_size, SEQ) if ctx.pp_size > 1 else None


def rank_rows(step: int, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """This data-parallel rank's rows of the global batch of `step`."""
    x, y = batch(step)
    rows = GLOBAL_BATCH // ctx.dp_size
    return x[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows], y[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows]


def train(model, opt, ctx: DistContext, steps: range, pipe: Pipeline | None = None) -> list[float]:
    """Train on the global batches of `steps`; each data-parallel rank takes its rows.
    Returns the global mean token loss of every step (the same number on every rank).
    Vocabulary-sharded logits (loss parallelism) get the loss and backward in `loss_parallel()`,
    as in the trainer."""
    losses = []
    for s in steps:
        x, y = rank_rows(s, ctx)
        if pipe is not None:
            loss = all_reduce_mean(pipe.step(x, y), ctx)
        else:
            with loss_parallel_context(ctx.tp_size > 1):  # a no-op on plain-tensor logits
                lsum = CausalLMObjective().loss(model, {"input_ids": x, "labels": y}).loss_sum
                # data-parallel gradient averaging divides by dp_size: scale so the result is the global mean
                (lsum * ctx.dp_size / (GLOBAL_BATCH * SEQ)).backward()
            loss = all_reduce_sum(lsum.detach(), ctx) / ctx.tp_size / (GLOBAL_BATCH * SEQ)
        clip_grad_norm_(model.parameters(), 1.0, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


@torch.no_grad()
def validate(model, ctx: DistContext, pipe: Pipeline | None = None) -> dict:
    """Loss and bits per byte on the held-out batch, as the trainer's validation computes them,
    and how the LM head (on the last pipeline stage) hands out its logits: "Shard(2)" under loss
    parallelism, else "full"."""
    x, y = rank_rows(VAL_STEP, ctx)
    placements: list[str] = []

    def record(module, args, logits):
        shard = isinstance(logits, DTensor) and logits.placements[0].is_shard()
        placements.append(f"Shard({logits.placements[0].dim})" if shard else "full")

    hook = model.lm_head.register_forward_hook(record) if model.lm_head is not None else None
    if pipe is not None:
        sums = pipe.eval_sums(x, y, TOKEN_BYTES)
    else:
        with loss_parallel_context(ctx.tp_size > 1):
            logits = model(x)
            sums = nll_byte_sums(token_nll(logits, y), y, TOKEN_BYTES)
    if hook is not None:
        hook.remove()
    if ctx.distributed:
        every_rank: list[list[str]] = [[] for _ in range(ctx.world_size)]
        torch.distributed.all_gather_object(every_rank, placements)
        placements = [p for rank in every_rank for p in rank]
    if ctx.dp_size > 1:
        torch.distributed.all_reduce(sums)  # tensor / pipeline peers add equal sums: ratios stay exact
    loss, bpb = float(sums[0] / sums[1]), float(sums[2] / (math.log(2) * sums[3]))
    return {"loss": loss, "bpb": bpb, "logits": "/".join(sorted(set(placements)))}
