"""What both tokenizer kinds share: lmforge's special-token names, the special-token check of
`encode` (tiktoken's rule), and the shape of a chat conversation."""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError

DEFAULT_SPECIALS = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
BOS, EOS, END = "<|bos|>", "<|eos|>", "<|end|>"
ROLES = ("system", "user", "assistant")


def check_special(
    specials: set[str], text: str, allowed_special: set[str] | str, disallowed_special: set[str] | str
) -> set[str]:
    """The allowed special tokens; raises when `text` holds a disallowed one (as tiktoken does)."""
    allowed = set(specials) if allowed_special == "all" else set(allowed_special)
    unknown = allowed - set(specials)
    if unknown:
        raise LmforgeError(f"allowed_special names tokens this tokenizer lacks: {sorted(unknown)}")
    disallowed = set(specials) - allowed if disallowed_special == "all" else set(disallowed_special)
    for s in disallowed:
        if s in text:
            raise LmforgeError(
                f"the text contains the special token {s!r}; pass allowed_special={{{s!r}}} (or 'all') "
                "to encode it as a special token, or use encode_ordinary to encode it as plain text"
            )
    return allowed


def check_conversation(messages: Any) -> list[tuple[str, str]]:
    """(role, content) of every message of a conversation, or LmforgeError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise LmforgeError("a conversation must be a non-empty list of {'role', 'content'} messages")
    return [check_message(m, i) for i, m in enumerate(messages)]


def check_message(m: Any, i: int) -> tuple[str, str]:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise LmforgeError(f"message {i}: expected a mapping with 'role' and 'content', got {m!r:.80}")
    role, content = m["role"], m["content"]
    if role not in ROLES:
        raise LmforgeError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
    if role == "system" and i != 0:
        raise LmforgeError(f"message {i}: a system message may only come first")
    if not isinstance(content, str):
        raise LmforgeError(f"message {i}: content must be a string, got {type(content).__name__}")
    return role, content
