"""Token losses over the model's logits, shared by every layer that scores labels.

Labels are aligned with the inputs (logits[:, t] predicts labels[:, t]); a label of
`IGNORE_INDEX` is not scored (prompt tokens in SFT, padding, everything but a completion in
preference and RL batches). Under loss parallelism (`lmforge.distributed`) the logits are a
DTensor sharded over the vocabulary and these functions run inside `loss_parallel()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def replicated_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a loss that may be a DTensor.

    Cross-entropy on vocabulary-sharded logits, run inside `loss_parallel()`, returns a DTensor
    replicated over the tensor-parallel ranks: its local value is already the full one (autograd
    flows through). Anything else is returned as it is.
    """
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T] in fp32 (0 where labels == IGNORE_INDEX)."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V).float()
    nll = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return replicated_value(nll).view(labels.shape)


def summed_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The next-token cross-entropy summed over the scored labels (a scalar, fp32)."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V).float()
    loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return replicated_value(loss)


def scored_count(labels: torch.Tensor) -> torch.Tensor:
    """How many labels are scored (not IGNORE_INDEX)."""
    return (labels != IGNORE_INDEX).sum()


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
