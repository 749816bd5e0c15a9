"""The `tokenizer` recipe section: BPE training and tokenization into shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TokenizerConfig:
    vocab_size: int = 8192  # 256 bytes + merges + special tokens
    pattern: str = "gpt4"  # a name (gpt4, gpt2, cl100k, nanochat) or a literal regex
    # added after the merges, in this order
    special_tokens: list[str] = field(
        default_factory=lambda: ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    )
    inputs: list[str] = field(default_factory=list)  # empty: the data stage's output
    text_field: str = "text"  # the text key of .jsonl / parquet inputs
    bad_input: Literal["error", "skip", "replace"] = "error"  # unreadable / non-UTF-8 records
    # characters of training text read, from the start of the inputs; 2e9 as nanochat, 0: everything.
    # Counting memory grows with the distinct chunks, not with this.
    max_chars: int = 2_000_000_000
    val_fraction: float = 0.05  # documents held out into the val shard
    workers: int = 0  # 0: every CPU this process may use

    def validate(self) -> None:
        if self.vocab_size < 256 + len(self.special_tokens):
            raise ValueError(
                f"vocab_size {self.vocab_size} is too small: at least 256 bytes + "
                f"{len(self.special_tokens)} special tokens = {256 + len(self.special_tokens)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
