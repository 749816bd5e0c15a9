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


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T] in fp32 (0 where labels == IGNORE_INDEX)."""
    V = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return nll.view(labels.shape)


class CausalLMObjective:
    """Next-token cross-entropy on batch["labels"] (IGNORE_INDEX = not scored).

    Serves pretraining (labels = inputs shifted by one) and SFT (labels masked outside the
    assistant's tokens). The labels are already aligned with the inputs: logits[:, t] predicts
    labels[:, t].
    """

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = model(batch["input_ids"])
        labels = batch["labels"]
        V = logits.shape[-1]
        loss_sum = F.cross_entropy(
            logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count = (labels != IGNORE_INDEX).sum()
        return LossOutput(loss_sum, count)

    @torch.no_grad()
    def token_nll(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token nll [B, T], labels [B, T]) for validation loss and bits per byte."""
        return token_nll(model(batch["input_ids"]), batch["labels"]), batch["labels"]
