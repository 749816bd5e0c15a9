"""Objectives: what the one training loop minimises, and the protocol the trainer relies on.

An objective turns a micro-batch into a `LossOutput`: the loss SUMMED over the micro-batch's
units (tokens for language modelling, pairs for preference objectives) and the unit count. The
trainer adds the sums and counts of all accumulation micro-batches (and data-parallel ranks)
and divides once, so the step's loss is an exact mean however the batch is split (as TRL's
`num_items_in_batch`). `metrics` are averaged over micro-batches and logged.

`Objective` declares everything the trainer, the pipeline schedule and loss parallelism ask of
an objective; the trainer asks nothing else and never looks at class names. Objectives subclass
it and inherit the defaults of what they do not support. The causal LM objective (pretraining
and SFT) supports all of it; DPO, reward and GRPO live in `lmforge.posttrain`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lmforge.model.flex import document_block_mask
from lmforge.model.loss import scored_count, summed_token_nll, token_nll


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # scalar, summed over the units of the micro-batch
    count: int | torch.Tensor  # number of units the sum covers
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


Batch = dict[str, torch.Tensor]


class Objective(Protocol):
    """What the trainer, the pipeline schedule and loss parallelism need from an objective."""

    takes_sharded_logits: bool = False
    """True when the loss reads the logits only through cross-entropy, so that under tensor
    parallelism the LM head may keep them sharded over the vocabulary (loss parallelism).
    False: the objective computes over the whole vocabulary itself and gets the logits whole."""

    logits_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """(logits, labels) -> the loss summed over the scored labels, when the loss needs nothing
    else: the last pipeline stage computes it, so the objective runs under pipeline
    parallelism, and each microbatch counts its scored labels. None: it needs more than that
    (both halves of a preference pair, per-row advantages) and pipelines refuse it."""

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> LossOutput:
        """The micro-batch's summed loss and unit count (forward included)."""
        ...

    def model_inputs(self, batch: Batch) -> Batch:
        """Keyword arguments of the model's forward besides the token ids (every pipeline stage
        gets them): none by default."""
        return {}

    def token_nll(
        self, model: Callable[..., torch.Tensor], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(per-token nll [B, T], labels [B, T]) for validation loss and bits per byte; None:
        validation averages `loss` instead."""
        return None

    def parameters_to_train(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter] | None:
        """The parameters the optimizer updates; None: every trainable parameter of the model."""
        return None


class CausalLMObjective(Objective):
    """Next-token cross-entropy on batch["labels"] (IGNORE_INDEX = not scored).

    Serves pretraining (labels = inputs shifted by one) and SFT (labels masked outside the
    assistant's tokens; packed rows pass their positions and mask to the model). Under loss
    parallelism the trainer runs `loss` and its backward inside `loss_parallel()` (see
    `lmforge.model.loss.replicated_value`).
    """

    takes_sharded_logits = True
    # packed rows (SFT packing, document masking): positions restarting per segment and a
    # block-diagonal causal mask, so no token attends across a segment boundary
    PACKING_INPUTS = ("positions", "attn_mask")

    def model_inputs(self, batch: Batch) -> Batch:
        inputs = {k: batch[k] for k in self.PACKING_INPUTS if k in batch}
        if "doc_ids" in batch:  # document masking on flex_attention: its BlockMask, on the batch's device
            inputs["attn_mask"] = document_block_mask(batch["doc_ids"])
        return inputs

    def logits_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return summed_token_nll(logits, labels)

    def loss(self, model, batch: Batch) -> LossOutput:
        logits = model(batch["input_ids"], **self.model_inputs(batch))
        return LossOutput(self.logits_loss(logits, batch["labels"]), scored_count(batch["labels"]))

    @torch.no_grad()
    def token_nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"], **self.model_inputs(batch))
        return token_nll(logits, batch["labels"]), batch["labels"]
