"""Shared by the distributed tests and their torchrun worker: a tiny model, a deterministic
batch stream and the training loop that every layout runs (and the single process as reference)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from lmforge.distributed import (
    DistContext,
    Pipeline,
    all_reduce_mean,
    all_reduce_sum,
    clip_grad_norm_,
    loss_parallel_context,
    uses_loss_parallel,
)
from lmforge.distributed.config import ParallelConfig
from lmforge.model.config import ModelConfig
from lmforge.model.loss import IGNORE_INDEX, nll_byte_sums, token_nll
from lmforge.model.transformer import Transformer
from lmforge.posttrain.sft_data import Example
from lmforge.train.objectives import CausalLMObjective, Objective

GLOBAL_BATCH, SEQ, VOCAB = 8, 16, 64
LR = 1e-2
VAL_STEP = 10_000  # the held-out batch: batch(VAL_STEP)
# bytes per token id for bits per byte: 0 (a special token) to 3, as a byte-level tokenizer's table
TOKEN_BYTES = torch.tensor([i % 4 for i in range(VOCAB)], dtype=torch.float64)


def model_config(arch: str = "llama", tied: bool = False) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        vocab_size=VOCAB,
        n_layer=4,
        d_model=32,
        n_head=4,
        n_kv_head=2 if arch == "llama" else 0,
        d_ff=64,
        max_seq_len=SEQ,
        tie_embeddings=tied,
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
    """The schedule of a pipeline layout, scoring with the causal LM objective's loss."""
    if ctx.pp_size == 1:
        return None
    return Pipeline(
        model,
        pcfg,
        ctx,
        GLOBAL_BATCH // ctx.dp_size,
        SEQ,
        CausalLMObjective().logits_loss,
        uses_loss_parallel(pcfg, ctx),
    )


def rank_rows(step: int, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """This data-parallel rank's rows of the global batch of `step`."""
    x, y = batch(step)
    rows = GLOBAL_BATCH // ctx.dp_size
    return x[ctx.dp_rank * rows : (ctx.dp_rank + 1) * rows], y[ctx.dp_rank * rows : (ctx.dp_rank + 1) * rows]


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


# ---------------------------------------------------------------------------- SFT through the Trainer


class Delegating(Objective):
    """A wrapper of another class around an objective that keeps its hooks by delegating them."""

    def __init__(self, inner: Objective):
        self.inner = inner
        self.takes_sharded_logits = inner.takes_sharded_logits
        self.logits_loss = inner.logits_loss

    def loss(self, model, batch):
        return self.inner.loss(model, batch)

    def model_inputs(self, batch):
        return self.inner.model_inputs(batch)

    def token_nll(self, model, batch):
        return self.inner.token_nll(model, batch)


def sft_examples(n: int = 32, seed: int = 0) -> list[Example]:
    """Short conversations (3-8 tokens, the first half prompt: not scored) that pack several to a row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (length + 1,), generator=g).tolist()
        prompt = length // 2
        out.append(Example(ids[:-1], [IGNORE_INDEX] * prompt + ids[prompt + 1 :]))
    return out


def sft_trainer(out_dir, pcfg: ParallelConfig, ctx: DistContext, objective: str = "sft"):
    """A Trainer with the sft stage's own objective and loader (or the objective behind
    `Delegating`) for 3 steps of 2 micro-batches on packed rows, and the list the LM head's
    forward hook fills with how it hands out the logits ("Shard(2)" or "full")."""
    from types import SimpleNamespace

    from lmforge.posttrain.config import PostTrainConfig
    from lmforge.recipe import load_recipe
    from lmforge.stages.posttrain import SFTStage, StageData
    from lmforge.train.trainer import Trainer

    cfg = PostTrainConfig(
        max_steps=3,
        micro_batch=4,
        seq_len=SEQ,
        batch_tokens=8 * SEQ,
        lr=LR,
        warmup_steps=1,
        device="cpu",
    )
    stage = SFTStage(load_recipe(None, {"seed": 0}), out_dir)
    model = build()
    no_specials = SimpleNamespace(special_ids={})  # the pad id falls back to 0
    obj, loader = stage.build(model, no_specials, cfg, StageData(None, sft_examples()), ctx)
    if objective == "wrapped":
        obj = Delegating(obj)
    torch.manual_seed(0)
    trainer = Trainer(model, obj, loader, cfg, out_dir, seed=0, stage="sft", parallel_cfg=pcfg, ctx=ctx)
    placements: list[str] = []

    def record(module, args, logits):
        shard = isinstance(logits, DTensor) and logits.placements[0].is_shard()
        placements.append(f"Shard({logits.placements[0].dim})" if shard else "full")

    if trainer.raw_model.lm_head is not None:
        trainer.raw_model.lm_head.register_forward_hook(record)
    return trainer, placements


def run_layouts(worker: str, out: Path, layouts: list[dict], timeout: int = 400) -> Path:
    """Launch tests/WORKER on 2 gloo ranks through torchrun with `out` and the JSON `layouts`, as a
    user launches training; fail with the end of its output when a rank fails."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(Path(__file__).parent / worker),
        str(out),
        json.dumps(layouts),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out
