"""Post-training data: conversations, preference pairs and RL prompts, in the layouts people have.

Sources (`sft.data`, `dpo.data`, `reward.data`, `rl.data`): JSONL files (plain, .gz, .zst), Parquet
files, and `hf:NAME[:CONFIG][:SPLIT]` Hugging Face datasets (streamed through `datasets`; a local
folder, or with HF_HUB_OFFLINE=1 the local hub snapshot; the spec is lmforge.data.readers').
Accepted layouts, one record each:
  conversations  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]};
                 ShareGPT {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]};
                 Alpaca {"instruction": str, "input": str (optional), "output": str};
                 prompt/completion {"prompt": str | messages, "completion": str | messages}
  preferences    TRL's layout: {"prompt": str | messages (optional), "chosen", "rejected"}, chosen and
                 rejected as strings or message lists (the last assistant message is the completion;
                 without a prompt, message lists share the prompt turns and strings their common prefix)
  RL prompts     {"prompt": str | "messages": [...], ...}: any other keys are passed to the
                 reward function as keyword lists (e.g. "answer")
A malformed record, or one in no accepted layout, raises LmforgeError naming the source and record,
the keys found and the layouts accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.documents import iter_jsonl
from lmforge.errors import LmforgeError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
}
CONVERSATION_LAYOUTS = (
    "messages [{role, content}]",
    "ShareGPT conversations [{from, value}]",
    "Alpaca {instruction, input, output}",
    "{prompt, completion}",
)


def iter_records(source: str) -> Iterator[tuple[str, dict]]:
    """(where, record) of a JSONL file, a Parquet file or an `hf:` dataset, in order."""
    if source.startswith("hf:"):
        yield from _hf_records(source)
    elif Path(source).suffix == ".parquet":
        yield from _parquet_records(source)
    else:
        for n, obj in iter_jsonl(source):
            yield f"{source}:{n}", obj


def _present(record: dict) -> dict:
    """A table row without its null columns: Parquet and `datasets` give every row every column
    of the table, null where a record had none (a mix of layouts would look like a bad record)."""
    return {k: v for k, v in record.items() if v is not None}


def _parquet_records(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise LmforgeError(f"{path}: file not found")
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", _present(record)


def _hf_records(source: str) -> Iterator[tuple[str, dict]]:
    from lmforge.data.readers import _hf_source, parse_hf_spec

    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise LmforgeError(f"{source}: Hugging Face datasets need the `datasets` package") from None
    name, config, split = parse_hf_spec(source)
    try:
        ds = datasets.load_dataset(_hf_source(name), config, split=split, streaming=True)
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{source}: cannot open the dataset: {type(e).__name__}: {e}") from None
    for row, record in enumerate(ds, 1):
        yield f"{source}: row {row}", _present(record)


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


def sharegpt_messages(turns: object, where: str) -> list[dict]:
    if not isinstance(turns, list):
        raise LmforgeError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} objects")
    out = []
    for i, t in enumerate(turns):
        role = SHAREGPT_ROLES.get(t.get("from", t.get("role"))) if isinstance(t, dict) else None
        value = t.get("value", t.get("content")) if isinstance(t, dict) else None
        if role is None or not isinstance(value, str):
            raise LmforgeError(
                f"{where}: turn {i} must be {{'from': system|human|gpt, 'value': str}}, got {t!r:.100}"
            )
        out.append({"role": role, "content": value})
    return check_messages(out, where)


def _as_messages(value: object, role: str, key: str, where: str) -> list[dict]:
    """A string (one turn of `role`) or a messages list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return check_messages(value, f"{where}: {key}")


def to_conversation(obj: dict, where: str) -> list[dict]:
    """One record in any conversation layout (CONVERSATION_LAYOUTS) -> a messages list."""
    if "messages" in obj:
        messages = check_messages(obj["messages"], where)
    elif "conversations" in obj:
        messages = sharegpt_messages(obj["conversations"], where)
    elif "prompt" in obj and "completion" in obj:
        prompt = _as_messages(obj["prompt"], "user", "prompt", where)
        messages = prompt + _as_messages(obj["completion"], "assistant", "completion", where)
    elif "instruction" in obj and "output" in obj:
        fields = {k: obj.get(k, "") for k in ("instruction", "input", "output")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise LmforgeError(f"{where}: Alpaca fields instruction, input, output must be strings")
        user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]
    else:
        raise LmforgeError(
            f"{where}: no conversation layout matches the keys {sorted(obj)}; accepted: "
            + "; ".join(CONVERSATION_LAYOUTS)
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError(f"{where}: the conversation has no assistant message (nothing to learn)")
    return messages


def load_conversations(sources: list[str]) -> list[list[dict]]:
    return [to_conversation(obj, where) for s in sources for where, obj in iter_records(s)]


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


def _implicit_prompt(chosen: object, rejected: object, where: str) -> tuple[list[dict], object, object]:
    """TRL's implicit prompt: message lists share their turns before the last assistant reply,
    strings their longest common prefix."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if not n:
            raise LmforgeError(f"{where}: no 'prompt', and chosen and rejected share no prompt text")
        return [{"role": "user", "content": chosen[:n]}], chosen[n:], rejected[n:]
    c = check_messages(chosen, f"{where}: chosen")
    r = check_messages(rejected, f"{where}: rejected")
    if c[:-1] != r[:-1] or len(c) < 2:
        raise LmforgeError(f"{where}: no 'prompt', and chosen and rejected do not share their prompt turns")
    return c[:-1], c[-1:], r[-1:]


def to_preference(obj: dict, where: str) -> Preference:
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise LmforgeError(
            f"{where}: no preference layout matches the keys {sorted(obj)} (missing {missing}); accepted: "
            "TRL's {prompt (optional), chosen, rejected}, chosen and rejected as strings or message lists"
        )
    chosen, rejected = obj["chosen"], obj["rejected"]
    if "prompt" in obj or "messages" in obj:
        if "messages" in obj:
            prompt = prompt_messages(obj, where)
        else:
            prompt = _as_messages(obj["prompt"], "user", "prompt", where)
    else:
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected, where)
    return Preference(prompt, _completion(chosen, "chosen", where), _completion(rejected, "rejected", where))


def load_preferences(sources: list[str]) -> list[Preference]:
    return [to_preference(obj, where) for s in sources for where, obj in iter_records(s)]


def load_prompts(paths: list[str]) -> list[dict]:
    """RL prompts: {"messages": [...], **other columns}."""
    out = []
    for source in paths:
        for where, obj in iter_records(source):
            extra = {k: v for k, v in obj.items() if k not in ("prompt", "messages")}
            out.append({"messages": prompt_messages(obj, where), **extra})
    return out
