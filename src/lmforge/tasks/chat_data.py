"""Post-training data files: conversations, preference pairs and RL prompts, read from JSONL.

Accepted lines (one JSON object per line, blank lines skipped):
  conversations  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                 or Alpaca {"instruction": str, "input": str (optional), "output": str}
  preferences    {"prompt": str | "messages": [...], "chosen": str, "rejected": str}; chosen and
                 rejected may also be message lists (TRL's conversational form): the last
                 assistant message is the completion
  RL prompts     {"prompt": str | "messages": [...], ...}: any other keys are passed to the
                 reward function as keyword lists (e.g. "answer")
A malformed line raises LmforgeError naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.documents import iter_jsonl
from lmforge.errors import LmforgeError

ROLES = ("system", "user", "assistant")


def check_messages(messages: object, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise LmforgeError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise LmforgeError(
                f"{where}: message {i} must be {{'role': system|user|assistant, 'content': str}}, "
                f"got {m!r:.100}"
            )
        if m["role"] == "system" and i:
            raise LmforgeError(f"{where}: message {i}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def to_conversation(obj: dict, where: str) -> list[dict]:
    """One JSONL object (messages or Alpaca form) -> a messages list."""
    if "messages" in obj:
        messages = check_messages(obj["messages"], where)
    elif "instruction" in obj and "output" in obj:
        fields = {k: obj.get(k, "") for k in ("instruction", "input", "output")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise LmforgeError(f"{where}: Alpaca fields instruction, input, output must be strings")
        user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]
    else:
        raise LmforgeError(
            f"{where}: expected {{'messages': [...]}} or Alpaca {{'instruction', 'input', 'output'}}, "
            f"got keys {sorted(obj)}"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError(f"{where}: the conversation has no assistant message (nothing to learn)")
    return messages


def load_conversations(paths: list[str]) -> list[list[dict]]:
    return [to_conversation(obj, f"{p}:{n}") for p in paths for n, obj in iter_jsonl(p)]


def prompt_messages(obj: dict, where: str) -> list[dict]:
    if "messages" in obj:
        return check_messages(obj["messages"], where)
    if isinstance(obj.get("prompt"), str):
        return [{"role": "user", "content": obj["prompt"]}]
    raise LmforgeError(f"{where}: expected a 'prompt' string or a 'messages' list, got keys {sorted(obj)}")


def _completion(value: object, key: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs = [m for m in check_messages(value, f"{where}: {key}") if m["role"] == "assistant"]
        if msgs:
            return msgs[-1]["content"]
    raise LmforgeError(
        f"{where}: {key!r} must be a string or a list of messages ending with an assistant turn"
    )


@dataclass
class Preference:
    messages: list[dict]  # the prompt conversation
    chosen: str
    rejected: str
    kind: str = ""  # the demo pairs' kind (lmforge.tasks.demo.PAIR_KINDS); empty for data files


def to_preference(obj: dict, where: str) -> Preference:
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise LmforgeError(f"{where}: missing {key!r} (a preference line needs prompt, chosen, rejected)")
    return Preference(
        prompt_messages(obj, where),
        _completion(obj["chosen"], "chosen", where),
        _completion(obj["rejected"], "rejected", where),
    )


def load_preferences(paths: list[str]) -> list[Preference]:
    return [to_preference(obj, f"{p}:{n}") for p in paths for n, obj in iter_jsonl(p)]


def load_prompts(paths: list[str]) -> list[dict]:
    """RL prompts: {"messages": [...], **other columns}."""
    out = []
    for p in paths:
        for n, obj in iter_jsonl(p):
            extra = {k: v for k, v in obj.items() if k not in ("prompt", "messages")}
            out.append({"messages": prompt_messages(obj, f"{p}:{n}"), **extra})
    return out
