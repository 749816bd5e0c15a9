"""Shared helpers for the interop / serving tests: a small trained tokenizer and random models."""

from __future__ import annotations

import functools

import torch

from lmforge.model.config import ModelConfig

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles.\n",
    "Now is the winter of our discontent made glorious summer by this sun of York; 1599 folios.\n",
    "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n",
]
SAMPLES = [
    "Hello world!",
    "To be, or not to be",
    "  spaces\n\nnewlines\t tabs 12345 ",
    "héllo wörld ✓ 你好 😉",
    "",
]


@functools.cache
def tokenizer(vocab_size: int = 360):
    from lmforge.data.embedded import embedded_documents
    from lmforge.tokenizer import Tokenizer

    plays = [text[:30_000] for _, text in embedded_documents("shakespeare")[:2]]
    return Tokenizer.train(plays + TEXTS, vocab_size=vocab_size, workers=1, progress=False)


def model(arch: str = "llama", n_kv_head: int = 2, tie: bool = True, seed: int = 0, **kw):
    """A random Transformer sized for fast tests (weights scaled up so greedy choices are clear)."""
    from lmforge.model.transformer import Transformer

    cfg = ModelConfig(
        arch=arch,
        vocab_size=kw.pop("vocab_size", tokenizer().vocab_size),
        n_layer=2,
        d_model=64,
        n_head=4,
        n_kv_head=n_kv_head if arch == "llama" else 4,
        max_seq_len=kw.pop("max_seq_len", 128),
        tie_embeddings=tie,
        init_std=0.08,
        rope_theta=kw.pop("rope_theta", 10000.0),
        **kw,
    )
    torch.manual_seed(seed)
    return Transformer(cfg).eval()
