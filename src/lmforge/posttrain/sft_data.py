"""SFT examples: rendered conversations with prompt-loss masking, packing, and the loader.

A conversation is rendered with THE chat template (`Tokenizer.render_chat`), whose mask is 1 on
assistant content and the `<|end|>` closing each assistant turn. The model input is ids[:-1];
the label at position t is ids[t+1] when that token is supervised, else IGNORE_INDEX (ignored
by the cross-entropy of `CausalLMObjective`). System, user, role tokens and padding are never targets.

Packing puts several short conversations in one row. Each row carries `positions` (restarting
at 0 for every conversation) and a block-diagonal causal `attn_mask`, so a token never attends
to another conversation, and the labels stay exact across the boundaries; the causal LM
objective passes both to the model. The loader follows the trainer's protocol: `next()`,
`state_dict()`, `load_state_dict()`; it is deterministic in the seed, reshuffles every epoch
(`EpochSampler`) and splits rows across data-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.model.loss import IGNORE_INDEX
from lmforge.posttrain.sampler import EpochSampler, shuffled


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def make_example(ids: list[int], mask: list[int], max_len: int) -> Example:
    """(ids, mask) of render_chat -> shifted input/labels, truncated to `max_len` positions."""
    ids, mask = ids[: max_len + 1], mask[: max_len + 1]
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids[1:], mask[1:])]
    return Example(ids[:-1], labels)


def sft_examples(conversations: list[list[dict]], tokenizer, max_len: int) -> list[Example]:
    """Render, mask and truncate; conversations left with no supervised token are dropped."""
    out = []
    for messages in conversations:
        ex = make_example(*tokenizer.render_chat(messages), max_len)
        if any(t != IGNORE_INDEX for t in ex.labels):
            out.append(ex)
    return out


def pack(examples: list[Example], seq_len: int) -> list[list[Example]]:
    """Next-fit packing in order: rows of whole examples whose lengths sum to <= seq_len."""
    rows: list[list[Example]] = []
    row: list[Example] = []
    used = 0
    for ex in examples:
        n = len(ex.input_ids)
        if row and used + n > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append(ex)
        used += n
    if row:
        rows.append(row)
    return rows


def collate(rows: list[list[Example]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of examples -> input_ids, labels, positions [B, T] and a boolean attn_mask [B, 1, T, T].

    A padding position attends only to itself (a fully masked row would give NaN in attention)."""
    T = length or max(sum(len(e.input_ids) for e in row) for row in rows)
    B = len(rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((B, T), dtype=np.int64)
    segment = np.full((B, T), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        t = 0
        for s, ex in enumerate(row):
            n = len(ex.input_ids)
            ids[b, t : t + n] = ex.input_ids
            labels[b, t : t + n] = ex.labels
            positions[b, t : t + n] = np.arange(n)
            segment[b, t : t + n] = s
            t += n
        segment[b, t:] = -1 - np.arange(T - t)  # each pad its own segment
    seg = torch.from_numpy(segment)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "positions": torch.from_numpy(positions),
        "attn_mask": mask[:, None],
    }


class SFTLoader:
    """Batches of packed (or one-per-row, padded) SFT examples, epoch after epoch."""

    def __init__(
        self,
        examples: list[Example],
        micro_batch: int,
        seq_len: int,
        seed: int,
        pad_id: int,
        packing: bool = True,
        dp_rank: int = 0,
        dp_size: int = 1,
    ):
        if not examples:
            raise ValueError("no SFT examples")
        self.examples, self.micro_batch, self.seq_len = examples, micro_batch, seq_len
        self.seed, self.pad_id, self.packing = seed, pad_id, packing
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.rows = EpochSampler(self._epoch_rows, dp_rank, dp_size)

    def _epoch_rows(self, epoch: int) -> list[list[Example]]:
        order = [self.examples[i] for i in shuffled(len(self.examples), self.seed, "sft", epoch)]
        return pack(order, self.seq_len) if self.packing else [[e] for e in order]

    def next(self, rows: int | None = None) -> dict[str, torch.Tensor]:
        """The next micro-batch: `rows` rows (default micro_batch)."""
        taken = self.rows.take(self.micro_batch if rows is None else rows)
        return collate(taken, self.pad_id, self.seq_len if self.packing else None)

    def state_dict(self) -> dict:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)
