"""Pretraining windows mixed into post-training, so the base model's language is not forgotten.

nanochat's mid-training mixes plain pretraining text into the chat data; without it a small model
fine-tuned on short answers loses its prose (val bits per byte rises by half). Two ways in:
  SFT  `sft.mix_pretrain = f`: a fraction f of the rows of every micro-batch are pretraining
       windows (labels on every token), the rest packed conversations. Rows are counted as
       ⌊(k+1)·f·B⌋ − ⌊k·f·B⌋ for micro-batch k, so any f is met exactly over a run.
  DPO  `dpo.mix_pretrain = α`: each micro-batch also carries pretraining windows under
       "pretrain_input_ids" / "pretrain_labels", and the objective adds α · (their mean per-token
       NLL) per pair (`pretrain_nll_term`).
The windows come from the run's own token shards (RUN_DIR/tokens, train split) through the
pretraining loader, on their own seeded stream, so the mixture is deterministic and resumable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX, token_nll
from lmforge.train.data import PretrainLoader

PRETRAIN_KEYS = ("pretrain_input_ids", "pretrain_labels")
MIX_SEED_OFFSET = 7919  # the windows' stream differs from the pretraining run's own


def pretrain_tokens(run_dir: Path, tokenizer) -> np.ndarray:
    """The train split of RUN_DIR/tokens, checked against the model's tokenizer."""
    from lmforge.shards import check_tokenizer, load_tokens

    tokens_dir = Path(run_dir) / "tokens"
    if not (tokens_dir / "meta.json").exists():
        raise LmforgeError(
            f"mix_pretrain needs the pretraining token shards in {tokens_dir}; run the tokenize stage "
            "or set mix_pretrain to 0"
        )
    check_tokenizer(tokens_dir, tokenizer)
    return load_tokens(tokens_dir, "train")


def rows_in_micro_batch(k: int, fraction: float, micro_batch: int) -> int:
    """How many of micro-batch k's rows are pretraining windows."""
    return math.floor((k + 1) * fraction * micro_batch) - math.floor(k * fraction * micro_batch)


class PretrainWindows:
    """Causal-LM rows of `seq_len` tokens: `take(n)` -> input_ids, labels, positions, attn_mask."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, dp_rank: int = 0, dp_size: int = 1):
        self.loader = PretrainLoader(tokens, 1, seq_len, seed + MIX_SEED_OFFSET, dp_rank, dp_size)
        self.seq_len = seq_len

    def take(self, n: int) -> dict[str, torch.Tensor]:
        rows = [self.loader.next() for _ in range(n)]
        T = self.seq_len
        empty = torch.zeros(0, T, dtype=torch.long)
        ids = torch.cat([r["input_ids"] for r in rows]) if rows else empty
        labels = torch.cat([r["labels"] for r in rows]) if rows else empty
        return {
            "input_ids": ids,
            "labels": labels,
            "positions": torch.arange(T).expand(n, T).clone(),
            "attn_mask": torch.ones(T, T, dtype=torch.bool).tril().expand(n, 1, T, T).clone(),
        }

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


class SFTMixLoader:
    """An SFT loader whose micro-batches swap a fraction of their rows for pretraining windows.

    Packed SFT rows are seq_len long, as the windows are, so the two stack into one batch; the
    causal-LM objective then averages over every supervised token of both."""

    def __init__(self, sft_loader, windows: PretrainWindows, fraction: float, micro_batch: int):
        if not 0.0 <= fraction < 1.0:
            raise ValueError("mix_pretrain must be in [0, 1)")
        if not sft_loader.packing:
            raise LmforgeError("sft.mix_pretrain needs sft.packing: true (rows of seq_len tokens)")
        self.sft, self.windows, self.fraction, self.micro_batch = sft_loader, windows, fraction, micro_batch
        self.step = 0

    def next(self) -> dict[str, torch.Tensor]:
        n_pre = rows_in_micro_batch(self.step, self.fraction, self.micro_batch)
        self.step += 1
        if not n_pre:
            return self.sft.next(self.micro_batch)
        pre = self.windows.take(n_pre)
        if n_pre == self.micro_batch:
            return pre
        sft = self.sft.next(self.micro_batch - n_pre)
        return {k: torch.cat([sft[k], pre[k]]) for k in sft}

    def state_dict(self) -> dict:
        return {"sft": self.sft.state_dict(), "windows": self.windows.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.sft.load_state_dict(state["sft"])
        self.windows.load_state_dict(state["windows"])
        self.step = int(state["step"])


class PreferenceMixLoader:
    """A preference loader whose micro-batches also carry `rows` pretraining windows (PRETRAIN_KEYS)."""

    def __init__(self, pair_loader, windows: PretrainWindows, rows: int):
        if rows < 1:
            raise ValueError("rows must be at least 1")
        self.pairs, self.windows, self.rows = pair_loader, windows, rows

    def next(self) -> dict[str, torch.Tensor]:
        batch = self.pairs.next()
        pre = self.windows.take(self.rows)
        batch["pretrain_input_ids"], batch["pretrain_labels"] = pre["input_ids"], pre["labels"]
        return batch

    def state_dict(self) -> dict:
        return {"pairs": self.pairs.state_dict(), "windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pairs.load_state_dict(state["pairs"])
        self.windows.load_state_dict(state["windows"])


def pretrain_nll_term(model, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Mean per-token NLL of the batch's pretraining windows, or None when it carries none."""
    if "pretrain_input_ids" not in batch:
        return None
    labels = batch["pretrain_labels"]
    nll = token_nll(model(batch["pretrain_input_ids"]), labels)
    return nll.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
