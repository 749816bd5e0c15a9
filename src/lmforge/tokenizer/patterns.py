"""Pre-tokenization split patterns, selectable by name or given literally.

Text is cut by one of these regexes into chunks before BPE; merges never cross a chunk boundary.
The patterns need the `regex` module (``\\p{L}`` classes, possessive quantifiers). Sources:
tiktoken ``openai_public.py`` (gpt2, cl100k), minbpe ``regex.py`` (gpt4, the default of
minbpe/rustbpe), nanochat ``tokenizer.py`` (digits in groups of at most two).
"""

from __future__ import annotations

import functools

from lmforge.errors import LmforgeError

GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4 = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
NANOCHAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {"gpt4": GPT4, "gpt2": GPT2, "cl100k": CL100K, "nanochat": NANOCHAT}


def resolve_pattern(pattern: str) -> str:
    """A pattern name (gpt4, gpt2, cl100k, nanochat) -> its regex; anything else is taken literally."""
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern.isidentifier():
        raise LmforgeError(
            f"unknown split pattern name {pattern!r} (names: {', '.join(PATTERNS)}; or give a regex)"
        )
    compile_pattern(pattern)
    return pattern


@functools.lru_cache(maxsize=16)
def compile_pattern(pattern: str):  # -> regex.Pattern
    import regex

    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise LmforgeError(f"split pattern {pattern!r} is not a valid regex: {e}") from None
