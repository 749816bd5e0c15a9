"""Objectives: what the one training loop minimises.

An objective turns a micro-batch into a `LossOutput`: the loss SUMMED over the micro-batch's
units (tokens for language modelling, pairs for preference objectives) and the unit count. The
trainer adds the sums and counts of all accumulation micro-batches (and data-parallel ranks)
and divides once, so the step's loss is an exact mean however the batch is split (as TRL's
`num_items_in_batch`). `metrics` are averaged over micro-batches and logged.

Other objectives (SFT's masked LM is this same one; DPO, reward, RL) live beside it and follow
the same protocol; an objective may expose `parameters_to_train` to restrict what is optimised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # scalar, summed over the units of the micro-batch
    count: int | torch.Tensor  # number of units the sum covers
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Objective(Protocol):
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput: ...


def replicated_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a loss that may be a DTensor.

    Under loss parallelism (`lmforge.distributed`, tensor parallel > 1) the logits are sharded over
    the vocabulary and cross-entropy, run inside `loss_parallel()`, returns a DTensor replicated
    over the tensor-parallel ranks: its local value is already the full one (autograd flows
    through). Anything else is returned as it is.
    """
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T] in fp32 (0 where labels == IGNORE_INDEX).

    Vocabulary-sharded logits (a DTensor) need the `loss_parallel()` context around this call."""
    V = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return replicated_value(nll).view(labels.shape)


def nll_byte_sums(nll: torch.Tensor, labels: torch.Tensor, token_bytes: torch.Tensor | None) -> torch.Tensor:
    """What validation adds up over batches and ranks, float64 [4]: summed nll of the scored
    tokens, their count, the summed nll of those that decode to at least one byte, and their
    bytes. Loss = [0] / [1]; bits per byte = [2] / (ln 2 x [3]) (without `token_bytes`, the
    tokenizer's byte length per token id, the last two are 0)."""
    scored = labels != IGNORE_INDEX
    nll = nll.double()
    sums = torch.zeros(4, dtype=torch.float64, device=nll.device)
    sums[0] = nll[scored].sum()
    sums[1] = scored.sum()
    if token_bytes is not None:
        nb = token_bytes[labels.clamp(min=0)] * scored
        sums[2] = (nll * (nb > 0)).sum()
        sums[3] = nb.sum()
    return sums


class CausalLMObjective:
    """Next-token cross-entropy on batch["labels"] (IGNORE_INDEX = not scored).

    Serves pretraining (labels = inputs shifted by one) and SFT (labels masked outside the
    assistant's tokens). The labels are already aligned with the inputs: logits[:, t] predicts
    labels[:, t]. Under loss parallelism the trainer runs `loss` and its backward inside
    `loss_parallel()` (see `replicated_value`).
    """

    loss_parallel = True  # takes vocabulary-sharded logits (an objective without it gets them whole)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = model(batch["input_ids"])
        labels = batch["labels"]
        V = logits.shape[-1]
        loss_sum = F.cross_entropy(
            logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        loss_sum = replicated_value(loss_sum)
        count = (labels != IGNORE_INDEX).sum()
        return LossOutput(loss_sum, count)

    @torch.no_grad()
    def token_nll(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token nll [B, T], labels [B, T]) for validation loss and bits per byte."""
        return token_nll(model(batch["input_ids"]), batch["labels"]), batch["labels"]
