"""Deterministic pretraining data: random windows of seq_len + 1 tokens from the token shards.

The data order does not depend on the world size. There is one stream of windows per seed:
window j's start is a pure function of (seed, j) (drawn in blocks of `BLOCK` from
`numpy.random.default_rng([seed, j // BLOCK])`). Each micro-step takes the next
micro_batch x dp_size windows of the stream and data-parallel rank r takes the r-th micro_batch
of them, so an optimizer step of `accum` micro-steps consumes the next
accum x micro_batch x dp_size = global batch windows: step k's global batch is the same set of
windows on 1, 2 or 4 ranks (the trainer sizes `accum` so the product is the global batch). The
loader's whole state is its position in the stream (windows consumed by all ranks together),
saved in every checkpoint; a run resumed on another number of ranks, or with another
micro_batch, continues from the same window.

Document awareness (`train.window_start`, `train.doc_mask`; the shards put <|eos|> after every
document). `window_start: document` draws windows from a fixed set of starts aligned to the
documents, as nanochat's BOS-aligned loader: each document is tiled in seq_len steps from the
separator before it, so every document's opening is seen from its first token, with the
separator in front acting as BOS. `doc_mask` adds, per window, `positions` restarting at 0 at
each document and a block-diagonal causal `attn_mask` (the SFT packing format), so no token
attends across a document boundary. A separator starts the document after it. With the flex
kernel (`train.doc_mask_kernel`; auto picks it on CUDA) the loader gives per-token document ids
`doc_ids` instead of the dense mask, and the objective turns them into a flex_attention BlockMask
on the device (`lmforge.model.flex`).

Validation uses fixed, non-overlapping windows from the start of the val split, the same at
every evaluation and in every run with the same tokens, whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX

BLOCK = 4096  # windows drawn per generator call; window j comes from block j // BLOCK


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return {"input_ids": chunk[:, :-1].contiguous(), "labels": chunk[:, 1:].contiguous()}


def document_starts(tokens: np.ndarray, eos_id: int, seq_len: int) -> np.ndarray:
    """Window starts tiling every document in seq_len steps from the separator before it (the
    first document from position 0), every start leaving room for a whole window."""
    seps = np.flatnonzero(np.asarray(tokens) == eos_id)
    bounds = np.concatenate(([0], seps[seps < len(tokens) - 1], [len(tokens)]))
    starts = [np.arange(a, b, seq_len) for a, b in zip(bounds[:-1], bounds[1:])]
    starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    return starts[starts <= len(tokens) - seq_len - 1].astype(np.int64)


def document_mask(input_ids: torch.Tensor, eos_id: int, kernel: str = "sdpa") -> dict[str, torch.Tensor]:
    """positions [B, T] restarting at every document, and for windows whose documents are separated
    by eos_id either the block-diagonal causal attn_mask [B, 1, T, T] (True = attend; kernel sdpa)
    or the document id of every token, doc_ids [B, T] (kernel flex)."""
    B, T = input_ids.shape
    doc = (input_ids == eos_id).long().cumsum(1)  # a separator opens the document after it
    first = torch.arange(T).expand(B, T) * (torch.diff(doc, dim=1, prepend=doc[:, :1] - 1) != 0)
    positions = torch.arange(T) - torch.cummax(first, dim=1).values
    if kernel == "flex":
        return {"positions": positions, "doc_ids": doc}
    mask = (doc[:, :, None] == doc[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    return {"positions": positions, "attn_mask": mask[:, None]}


def _flex_blocker(device: torch.device, pipeline: bool, dropout: float) -> str | None:
    """Why flex_attention cannot train here, or None."""
    if device.type != "cuda":
        return f"flex_attention has no backward on {device.type} (it trains on CUDA only)"
    if pipeline:
        return "pipeline parallelism splits the model's tensor inputs into microbatches, not a BlockMask"
    if dropout:
        return f"flex_attention has no attention dropout (model.dropout is {dropout})"
    return None


def doc_mask_kernel(
    device: torch.device, *, choice: str = "auto", pipeline: bool = False, dropout: float = 0.0
) -> str:
    """The attention kernel of document masking for `train.doc_mask_kernel`: sdpa (a dense mask),
    flex (a flex_attention BlockMask), or for auto flex where it can run and sdpa elsewhere. flex
    trains on CUDA only and serves neither pipeline parallelism (its schedule splits the model's
    tensor inputs into microbatches) nor attention dropout: asked for there, it is refused before
    training starts."""
    blocker = _flex_blocker(device, pipeline, dropout)
    if choice == "flex" and blocker:
        raise LmforgeError(f"train.doc_mask_kernel flex cannot run here: {blocker}; use auto or sdpa")
    if choice == "auto":
        return "sdpa" if blocker else "flex"
    return choice


class PretrainLoader:
    """`next()` -> this rank's {"input_ids": [micro_batch, seq_len], "labels": same, shifted by
    one} (int64, CPU) of the next micro-step's micro_batch x dp_size windows."""

    def __init__(
        self,
        tokens: np.ndarray,
        micro_batch: int,
        seq_len: int,
        seed: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        *,
        window_start: str = "random",
        doc_mask: bool = False,
        doc_mask_kernel: str = "sdpa",
        eos_id: int | None = None,
    ):
        if len(tokens) < seq_len + 2:
            raise LmforgeError(
                f"the training split has {len(tokens)} tokens, "
                f"fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        if (window_start == "document" or doc_mask) and eos_id is None:
            raise LmforgeError(
                "document-aware windows need the tokenizer's <|eos|> id (the document separator)"
            )
        self.tokens, self.micro_batch, self.seq_len = tokens, micro_batch, seq_len
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.doc_mask, self.doc_mask_kernel, self.eos_id = doc_mask, doc_mask_kernel, eos_id
        self.starts = document_starts(tokens, eos_id, seq_len) if window_start == "document" else None
        self.position = 0  # windows of the stream consumed by all ranks together
        self._block: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.int64))

    def window_starts(self, first: int, n: int) -> np.ndarray:
        """The token offsets of windows first .. first + n - 1 of the stream."""
        out, j = [], first
        while j < first + n:
            block, offset = divmod(j, BLOCK)
            take = min(BLOCK - offset, first + n - j)
            out.append(self._drawn(block)[offset : offset + take])
            j += take
        return np.concatenate(out)

    def _drawn(self, block: int) -> np.ndarray:
        if self._block[0] != block:
            rng = np.random.default_rng([self.seed, block])
            if self.starts is None:
                drawn = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=BLOCK)
            else:
                drawn = self.starts[rng.integers(0, len(self.starts), size=BLOCK)]
            self._block = (block, drawn)
        return self._block[1]

    def next(self) -> dict[str, torch.Tensor]:
        starts = self.window_starts(self.position + self.dp_rank * self.micro_batch, self.micro_batch)
        self.position += self.micro_batch * self.dp_size
        batch = _windows(self.tokens, starts, self.seq_len)
        if self.doc_mask:
            batch.update(document_mask(batch["input_ids"], self.eos_id, self.doc_mask_kernel))
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def val_batches(
    tokens: np.ndarray, micro_batch: int, seq_len: int, max_tokens: int, dp_rank: int = 0, dp_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed consecutive windows covering up to `max_tokens` target tokens of the val split
    (all of it when max_tokens <= 0); ranks take interleaved batches. Every rank runs the same
    number of forwards (FSDP gathers are collective): the batches are padded to a multiple of
    dp_size with batches whose labels are all IGNORE_INDEX, so the scored windows are the same
    for any number of ranks."""
    n_windows = (len(tokens) - 1) // seq_len
    if max_tokens > 0:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    if n_windows <= 0:
        raise LmforgeError(
            f"the validation split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}"
        )
    starts = np.arange(n_windows, dtype=np.int64) * seq_len
    n_batches = -(-n_windows // micro_batch)
    for b in range(dp_rank, -(-n_batches // dp_size) * dp_size, dp_size):
        if b < n_batches:
            yield _windows(tokens, starts[b * micro_batch : (b + 1) * micro_batch], seq_len)
        else:
            padding = _windows(tokens, starts[:micro_batch], seq_len)
            yield {**padding, "labels": torch.full_like(padding["labels"], IGNORE_INDEX)}
