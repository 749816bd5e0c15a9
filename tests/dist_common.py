"""Shared by the distributed tests and their torchrun worker: a tiny model, a deterministic
batch stream and the training loop that every layout runs (and the single process as reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.parallel import DistContext, Pipeline, all_reduce_mean, all_reduce_sum, clip_grad_norm_
from lmforge.train.config import ParallelConfig

GLOBAL_BATCH, SEQ, VOCAB = 8, 16, 64
LR = 1e-2


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


def train(model, opt, ctx: DistContext, steps: range, pcfg: ParallelConfig | None = None) -> list[float]:
    """Train on the global batches of `steps`; each data-parallel rank takes its rows.
    Returns the global mean token loss of every step (the same number on every rank)."""
    pipe = Pipeline(model, pcfg, ctx, GLOBAL_BATCH // ctx.dp_size, SEQ) if ctx.pp_size > 1 else None
    losses = []
    for s in steps:
        x, y = batch(s)
        rows = GLOBAL_BATCH // ctx.dp_size
        x, y = x[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows], y[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows]
        if pipe is not None:
            loss = all_reduce_mean(pipe.step(x, y), ctx)
        else:
            logits = model(x)
            lsum = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            # data-parallel gradient averaging divides by dp_size: scale so the result is the global mean
            (lsum * ctx.dp_size / (GLOBAL_BATCH * SEQ)).backward()
            loss = all_reduce_sum(lsum.detach(), ctx) / ctx.tp_size / (GLOBAL_BATCH * SEQ)
        clip_grad_norm_(model.parameters(), 1.0, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses
