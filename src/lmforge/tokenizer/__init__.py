"""Byte-level BPE tokenizer: our own trainer and reference encoder, tiktoken fast path, HF export."""

from lmforge.tokenizer.tokenizer import DEFAULT_SPECIALS, Tokenizer

__all__ = ["DEFAULT_SPECIALS", "Tokenizer"]
