"""Preference pairs as tensors: tokenization, batching, summed completion log-probs.

A pair is rendered as the prompt conversation with the generation prompt (`<|assistant|>`),
then the completion's tokens and `<|end|>`. As in SFT, the input is ids[:-1] and labels are the
next tokens, IGNORE_INDEX everywhere except the completion (its content and `<|end|>`). A batch holds
the chosen rows first and the rejected rows after them ([chosen; rejected], TRL's layout), right
padded. Too-long pairs lose prompt tokens from the left; the completion is kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.model.loss import IGNORE_INDEX, token_nll
from lmforge.posttrain.sampler import EpochSampler, shuffled
from lmforge.tasks.chat_data import Preference


@dataclass
class TokenizedPair:
    chosen: tuple[list[int], list[int]]  # (input_ids, labels)
    rejected: tuple[list[int], list[int]]


def completion_row(
    prompt_ids: list[int], completion_ids: list[int], max_len: int
) -> tuple[list[int], list[int]]:
    """Shifted (input_ids, labels) for prompt + completion, labels only on the completion."""
    keep = max(1, max_len + 1 - len(completion_ids))
    prompt_ids = prompt_ids[-keep:]
    full = (prompt_ids + completion_ids)[: max_len + 1]
    labels = [IGNORE_INDEX] * (len(prompt_ids) - 1) + completion_ids
    return full[:-1], labels[: len(full) - 1]


def tokenize_pair(pair: Preference, tokenizer, max_len: int) -> TokenizedPair:
    prompt, _ = tokenizer.render_chat(pair.messages, add_generation_prompt=True)
    end = tokenizer.special_ids["<|end|>"]
    return TokenizedPair(
        completion_row(prompt, tokenizer.encode_ordinary(pair.chosen) + [end], max_len),
        completion_row(prompt, tokenizer.encode_ordinary(pair.rejected) + [end], max_len),
    )


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return {"input_ids": ids, "labels": labels}


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    return pad_rows([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(label) over the labelled positions of every row: [rows]."""
    logits = model(batch["input_ids"])
    return -token_nll(logits, batch["labels"]).sum(-1)


@torch.no_grad()
def precompute_logps(
    model, pairs: list[TokenizedPair], pad_id: int, batch_size: int = 16
) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probs of `model` for every pair (the frozen reference)."""
    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    device = next(model.parameters()).device
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        lp = sequence_logps(model, batch).float().cpu()
        n = len(chunk)
        out += list(zip(lp[:n].tolist(), lp[n:].tolist()))
    model.train(was_training)
    return out


class PreferenceLoader:
    """Micro-batches of pairs ([chosen; rejected]), reshuffled each epoch; optional reference log-probs.

    With `ref_logps` the batch carries "ref_logps" [2B] in the same [chosen; rejected] order."""

    def __init__(
        self,
        pairs: list[TokenizedPair],
        micro_batch: int,
        seed: int,
        pad_id: int,
        ref_logps: list[tuple[float, float]] | None = None,
        dp_rank: int = 0,
        dp_size: int = 1,
    ):
        if not pairs:
            raise ValueError("no preference pairs")
        self.pairs, self.micro_batch, self.seed, self.pad_id = pairs, micro_batch, seed, pad_id
        self.ref_logps, self.dp_rank, self.dp_size = ref_logps, dp_rank, dp_size
        self.order = EpochSampler(lambda epoch: shuffled(len(pairs), seed, "pairs", epoch), dp_rank, dp_size)

    def next(self) -> dict[str, torch.Tensor]:
        idx = self.order.take(self.micro_batch)
        batch = collate_pairs([self.pairs[i] for i in idx], self.pad_id)
        if self.ref_logps is not None:
            ref = [self.ref_logps[i][0] for i in idx] + [self.ref_logps[i][1] for i in idx]
            batch["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
        return batch

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
