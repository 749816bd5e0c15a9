"""Deterministic pretraining data: random windows of seq_len + 1 tokens from the token shards.

Batch number k is a pure function of (seed, dp_rank, k): its window starts come from
`numpy.random.default_rng([seed, dp_rank, k])`. The loader's whole state is therefore one
counter, saved in every checkpoint, and a resumed run sees exactly the batches the
uninterrupted run would have seen. Data-parallel ranks draw from independent streams.

Validation uses fixed, non-overlapping windows from the start of the val split, the same at
every evaluation and in every run with the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.errors import LmforgeError


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return {"input_ids": chunk[:, :-1].contiguous(), "labels": chunk[:, 1:].contiguous()}


class PretrainLoader:
    """`next()` -> {"input_ids": [micro_batch, seq_len], "labels": same, shifted by one} (int64, CPU)."""

    def __init__(
        self, tokens: np.ndarray, micro_batch: int, seq_len: int, seed: int, dp_rank: int = 0, dp_size: int = 1
    ):
        if len(tokens) < seq_len + 2:
            raise LmforgeError(
                f"the training split has {len(tokens)} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        self.tokens, self.micro_batch, self.seq_len = tokens, micro_batch, seq_len
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.counter = 0

    def next(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.dp_rank, self.counter])
        self.counter += 1
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.micro_batch)
        return _windows(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict:
        return {"counter": self.counter, "seed": self.seed, "dp_rank": self.dp_rank}

    def load_state_dict(self, state: dict) -> None:
        self.counter = int(state["counter"])


def val_batches(
    tokens: np.ndarray, micro_batch: int, seq_len: int, max_tokens: int, dp_rank: int = 0, dp_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed consecutive windows covering up to `max_tokens` target tokens of the val split
    (all of it when max_tokens <= 0); ranks take interleaved batches."""
    n_windows = (len(tokens) - 1) // seq_len
    if max_tokens > 0:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    if n_windows <= 0:
        raise LmforgeError(f"the validation split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    starts = np.arange(n_windows, dtype=np.int64) * seq_len
    n_batches = -(-n_windows // micro_batch)
    if dp_size > 1:  # every rank must run the same number of forwards (FSDP gathers are collective)
        n_batches = max(dp_size, n_batches - n_batches % dp_size)
    for b, i in enumerate(range(0, n_batches * micro_batch, micro_batch)):
        i %= n_windows  # fewer batches than ranks: wrap around rather than leave a rank idle
        if b % dp_size == dp_rank:
            yield _windows(tokens, starts[i : i + micro_batch], seq_len)
