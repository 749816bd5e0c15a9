"""Pipeline parallelism: the layer split per stage and the GPipe / 1F1B schedule over microbatches."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.loss_parallel import loss_parallel_context
from lmforge.distributed.mesh import DistContext
from lmforge.errors import LmforgeError
from lmforge.model.loss import nll_byte_sums, scored_count, token_nll


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
    if model.cfg.value_embeds:
        raise LmforgeError(
            "pipeline parallelism does not support model.value_embeds (a later stage receives hidden "
            "states, not the token ids its value embeddings look up): set model.value_embeds: 0"
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


LogitsLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Pipeline:
    """One training step of a pipeline-parallel stage: `step(input_ids, labels) -> loss`.

    Feeds `n_microbatches` microbatches through a GPipe or 1F1B schedule. The last stage scores
    each microbatch with the objective's `loss_fn(logits, labels)` (its loss summed over the
    scored labels) divided by the denominator of the whole batch, and the schedule does not
    rescale gradients, so the gradient is that of the exact token mean (as in the
    single-process loop). Keyword inputs of the model (SFT's packed positions and attention
    mask) are split into the same microbatches and given to every stage. The returned loss is
    broadcast to every rank. With `loss_parallel` the last stage's logits are vocabulary shards
    and the schedule runs inside `loss_parallel_context`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: ParallelConfig,
        ctx: DistContext,
        micro_batch: int,
        seq_len: int,
        loss_fn: LogitsLoss,
        loss_parallel: bool = False,
    ):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.ctx = ctx
        self.group = ctx.submesh("pp").get_group()
        self.n_micro, self.micro_batch = cfg.pp_microbatches, micro_batch
        if micro_batch % self.n_micro:
            raise LmforgeError(
                f"train.micro_batch ({micro_batch}) must divide into "
                f"parallel.pp_microbatches ({self.n_micro})"
            )
        self.loss_fn, self.loss_parallel = loss_fn, loss_parallel
        self._count = torch.ones((), device=ctx.device)
        self._eval_nll: list[torch.Tensor] | None = None  # per-token nll of each microbatch, in eval_sums
        stage = PipelineStage(model, ctx.pp_rank, ctx.pp_size, ctx.device, group=self.group)
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg.pp_schedule]
        self.schedule = cls(stage, self.n_micro, loss_fn=self._microbatch_loss, scale_grads=False)

    def _microbatch_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._eval_nll is not None:
            nll = token_nll(logits, labels)
            self._eval_nll.append(nll)
            return nll.sum()
        return self.loss_fn(logits, labels) / self._count

    def _run(self, run, input_ids: torch.Tensor, labels: torch.Tensor, inputs: dict | None, **kw) -> None:
        """`schedule.step` or `schedule.eval` on this stage: the token ids enter the first stage,
        the keyword inputs every stage, the labels the last."""
        device = self.ctx.device
        kwargs = {k: v.to(device) for k, v in (inputs or {}).items()}
        args = (input_ids.to(device),) if self.ctx.is_first_stage else ()
        with loss_parallel_context(self.loss_parallel):
            run(*args, target=labels.to(device), **kw, **kwargs)

    def step(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        denominator: float | None = None,
        inputs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Forward + backward of one batch; the loss is sum(loss) / denominator (default: the
        batch's scored label count, i.e. the mean; the trainer passes 1 to get the sum it
        rescales). `inputs`: the model's keyword inputs, batched like input_ids."""
        import torch.distributed as dist

        if denominator is None:
            self._count = scored_count(labels).clamp(min=1).to(self.ctx.device)
        else:
            self._count = torch.tensor(float(denominator), device=self.ctx.device)
        losses: list[torch.Tensor] = []
        self._run(self.schedule.step, input_ids, labels, inputs, losses=losses)
        total = torch.stack(losses).sum().detach() if losses else torch.zeros((), device=self.ctx.device)
        dist.all_reduce(total, group=self.group)  # only the last stage contributes
        return total

    @torch.no_grad()
    def eval_sums(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        token_bytes: torch.Tensor | None = None,
        inputs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Validation sums of a batch (`lmforge.model.loss.nll_byte_sums`: nll, tokens, and the
        nll and bytes for bits per byte), forward only, the same on every stage. The last stage
        keeps each microbatch's per-token nll; in schedule order they make up the batch's [B, T].
        A batch of another size than the training micro-batch (the stages' buffers are shaped for
        it) is skipped: zeros."""
        import torch.distributed as dist

        sums = torch.zeros(4, dtype=torch.float64, device=self.ctx.device)
        if input_ids.shape[0] != self.micro_batch:
            return sums
        labels = labels.to(self.ctx.device)
        self._eval_nll = []
        try:
            self._run(self.schedule.eval, input_ids, labels, inputs, losses=[])
            if self._eval_nll:
                sums = nll_byte_sums(torch.cat(self._eval_nll).view(labels.shape), labels, token_bytes)
        finally:
            self._eval_nll = None
        dist.all_reduce(sums, group=self.group)  # only the last stage contributes
        return sums
