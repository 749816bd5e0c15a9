"""HFTokenizer: a model's own tokenizer.json, kept as-is and run by the `tokenizers` library behind
the interface of lmforge's Tokenizer (encode, encode_ordinary, encode_batch, decode, id_to_bytes,
token_bytes, special ids, render_chat, hash, save / load).

`lmforge import` keeps a tokenizer this way when lmforge's byte-level BPE format cannot hold it:
SentencePiece-style BPE or Unigram (Llama 2, Mistral), a normalizer (Qwen2's NFC), other
pre-tokenizers (SmolLM2's digit split), or a chat template of the model's own (Llama 3). Ids are
the model's own ids, so nothing in the model moves.

Special tokens: `special_ids` holds the tokenizer's special tokens by their text and, so that code
written against lmforge's tokenizer runs unchanged, lmforge's three structural names mapped onto
the model's tokens: <|bos|> -> bos_token, <|eos|> -> eos_token, <|end|> -> the token that closes an
assistant turn in the chat template (ChatML's <|im_end|>, Llama 3's <|eot_id|>; else eos_token).

Chat: `render_chat` renders the model's chat template (tokenizer_config.json's `chat_template` or
chat_template.jinja) with jinja2 as transformers' `apply_chat_template` does and tokenizes the text
in one piece, so the ids are transformers'. A tokenizer without a template gets lmforge's layout in
the model's vocabulary (LMFORGE_LAYOUT: bos_token, then `<|role|>` content eos_token per message,
the role markers as plain text); `chat_template_source` says which ("model" or "lmforge"), and the
template is saved into tokenizer_config.json, so an export chats the same way. The loss mask marks
each assistant turn's text (content through the turn's end token), found by rendering the
conversation prefix by prefix, which needs a template that renders a conversation as the
concatenation of its turns (every common template does; others are refused with the reason).

Streaming (`id_to_bytes`) follows the decoder: byte-level vocabularies map back through GPT-2's byte
alphabet, SentencePiece pieces turn "▁" into a space and <0xNN> into the byte. A SentencePiece
`decode` drops the space in front of the first word; the streamed bytes keep it.

On disk: lmforge_tokenizer.json ({"format": "hf-tokenizers", "version": 1, hash, chat template
source}) beside tokenizer.json, tokenizer_config.json and special_tokens_map.json as they came.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, atomic_write_text, read_json
from lmforge.tokenizer.bpe import bytes_to_unicode
from lmforge.tokenizer.specials import BOS, END, EOS, check_conversation, check_special

FORMAT = "hf-tokenizers"
VERSION = 1
FILENAME = "lmforge_tokenizer.json"

# lmforge's chat layout for a model that brings no template: <|bos|> <|role|> content <|end|>, with
# the model's own bos and eos tokens in place of lmforge's specials.
LMFORGE_LAYOUT = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer:
    """A `tokenizers` tokenizer.json with lmforge's Tokenizer interface (module docstring)."""

    def __init__(self, tokenizer_json: str, config: dict, special_map: dict | None = None):
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise LmforgeError("a model's own tokenizer.json needs the `tokenizers` package") from None
        self.tokenizer_json = tokenizer_json
        self.config = dict(config)
        self.special_map = dict(special_map or {})
        try:
            self._backend = Backend.from_str(tokenizer_json)
            self._plain = Backend.from_str(tokenizer_json)  # special-token text encodes as plain text
        except Exception as e:
            raise LmforgeError(f"tokenizer.json cannot be read by `tokenizers`: {e}") from None
        self._plain.encode_special_tokens = True
        data = json.loads(tokenizer_json)
        self.special_tokens: dict[str, int] = {
            t["content"]: t["id"] for t in data.get("added_tokens") or [] if t.get("special")
        }
        self._added = {t["id"]: t["content"] for t in data.get("added_tokens") or []}
        self._decoder = data.get("decoder") or {}
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template_source = "model" if template else "lmforge"
        self.chat_template: str = template or LMFORGE_LAYOUT
        self.config["chat_template"] = self.chat_template
        self.bos_token = self._token_name("bos_token")
        self.eos_token = self._token_name("eos_token")
        self.train_stats: dict[str, Any] = {}

    def _token_name(self, key: str) -> str | None:
        value = self.config.get(key, self.special_map.get(key))
        name = value.get("content") if isinstance(value, dict) else value
        return name if isinstance(name, str) and self._backend.token_to_id(name) is not None else None

    # ------------------------------------------------------------------ properties

    @cached_property
    def vocab_size(self) -> int:
        return max(self._backend.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def bos_id(self) -> int | None:
        return self._backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self._backend.token_to_id(self.eos_token) if self.eos_token else None

    @cached_property
    def end_id(self) -> int | None:
        """The token that closes an assistant turn: the first special token the template puts after
        an assistant message's content, else eos."""
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "lmforge-probe"}]
        try:
            text = self._render(probe, False)
        except LmforgeError:
            return self.eos_id
        tail = text[text.rfind("lmforge-probe") + len("lmforge-probe") :]
        specials = set(self.special_tokens.values())
        found = [i for i in self._backend.encode(tail, add_special_tokens=False).ids if i in specials]
        return found[0] if found else self.eos_id

    @cached_property
    def special_ids(self) -> dict[str, int]:
        """lmforge's <|bos|>, <|eos|>, <|end|> mapped onto the model's tokens, then its own specials."""
        aliases = {BOS: self.bos_id, EOS: self.eos_id, END: self.end_id}
        return {**{k: v for k, v in aliases.items() if v is not None}, **self.special_tokens}

    @cached_property
    def hash(self) -> str:
        blob = json.dumps(
            [self.tokenizer_json, self.chat_template, self.bos_token, self.eos_token], separators=(",", ":")
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(vocab_size={self.vocab_size}, chat_template={self.chat_template_source}, "
            f"hash={self.hash})"
        )

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        text: str,
        allowed_special: set[str] | str = frozenset(),
        disallowed_special: set[str] | str = "all",
    ) -> list[int]:
        """Text -> ids (no BOS added). Special-token strings are refused unless allowed (tiktoken's rule);
        `tokenizers` matches either every special token or none, so a strict subset is allowed only
        when the text holds no other special token."""
        allowed = check_special(set(self.special_tokens), text, allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        others = set(self.special_tokens) - allowed
        if any(s in text for s in others):
            raise LmforgeError(
                f"this tokenizer encodes all special tokens or none; the text also holds {sorted(others)}"
            )
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating special-token strings as plain text."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = 8,
        allowed_special: set[str] | str = frozenset(),
        disallowed_special: set[str] | str = "all",
    ) -> list[list[int]]:
        """Encode many texts (`tokenizers` runs them in parallel itself; `num_threads` is unused)."""
        allowed = set()
        for text in texts:
            allowed = check_special(set(self.special_tokens), text, allowed_special, disallowed_special)
        backend = self._backend if allowed else self._plain
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise LmforgeError(f"token id {bad[0]!r} is not in the vocabulary (0..{self.vocab_size - 1})")
        return self._backend.decode(ids, skip_special_tokens=False)

    @cached_property
    def _id_bytes(self) -> list[bytes]:
        byte_level = "ByteLevel" in json.dumps(self._decoder)
        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        out = []
        for i in range(self.vocab_size):
            piece = self._added.get(i) or self._backend.id_to_token(i)
            if piece is None:
                out.append(b"")
            elif i in self._added:
                out.append(piece.encode("utf-8"))
            elif byte_level and all(c in to_byte for c in piece):
                out.append(bytes(to_byte[c] for c in piece))
            elif BYTE_PIECE.fullmatch(piece):
                out.append(bytes([int(BYTE_PIECE.fullmatch(piece).group(1), 16)]))
            else:
                out.append(piece.replace("▁", " ").encode("utf-8"))
        return out

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._id_bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.id_to_bytes(i) for i in ids)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of every id (0 for special tokens), for bits-per-byte."""
        specials = set(self.special_tokens.values())
        return [0 if i in specials else len(b) for i, b in enumerate(self._id_bytes)]

    # ------------------------------------------------------------------ chat

    @cached_property
    def _template(self):
        from datetime import datetime

        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
        return env.from_string(self.chat_template)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in self.special_map.items()}
        try:
            return self._template.render(
                **tokens,
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except Exception as e:
            raise LmforgeError(f"the chat template fails on this conversation: {e}") from None

    def render_chat(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, mask) of a conversation in the chat template: mask is 1 on each assistant turn's
        tokens up to and including its end token (`end_id`), 0 elsewhere."""
        roles = [role for role, _ in check_conversation(messages)]
        if self.chat_template_source == "lmforge" and self.eos_token is None:
            raise LmforgeError("this tokenizer has no chat template and no eos_token to close a turn")
        text = self._render(messages, add_generation_prompt)
        spans = []
        for i, role in enumerate(roles):
            if role != "assistant":
                continue
            start, turn = self._render(messages[:i], True), self._render(messages[: i + 1], False)
            if not (text.startswith(turn) and turn.startswith(start)):
                raise LmforgeError(
                    "the chat template does not render a conversation as the concatenation of its turns, "
                    "so the assistant's tokens cannot be told apart"
                )
            spans.append((len(start), len(turn)))
        enc = self._backend.encode(text, add_special_tokens=False)
        ids, mask = list(enc.ids), [0] * len(enc.ids)
        for a, b in spans:
            inside = [k for k, (s, _) in enumerate(enc.offsets) if a <= s < b]
            ends = [k for k in inside if ids[k] == self.end_id]
            for k in inside:
                if not ends or k <= ends[0]:
                    mask[k] = 1
        return ids, mask

    # ------------------------------------------------------------------ save / load

    def hf_files(self) -> dict[str, dict]:
        """The Hugging Face files, as they came in (tokenizer_config.json with the chat template used)."""
        files = {"tokenizer.json": json.loads(self.tokenizer_json), "tokenizer_config.json": self.config}
        if self.special_map:
            files["special_tokens_map.json"] = self.special_map
        return files

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "tokenizer.json", self.tokenizer_json)
        for name, obj in self.hf_files().items():
            if name != "tokenizer.json":
                atomic_write_json(directory / name, obj)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            "chat_template_source": self.chat_template_source,
        }
        atomic_write_json(directory / FILENAME, meta)
        return directory

    save_hf = save

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> HFTokenizer:
        """A Hugging Face model folder's tokenizer files (tokenizer.json required)."""
        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise LmforgeError(f"{directory}: no tokenizer.json")
        config = _read_optional(directory / "tokenizer_config.json")
        if (directory / "chat_template.jinja").is_file():
            config["chat_template"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        special_map = _read_optional(directory / "special_tokens_map.json")
        return cls((directory / "tokenizer.json").read_text(encoding="utf-8"), config, special_map)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HFTokenizer:
        """A directory written by `save`; its hash must match what was saved."""
        directory = Path(directory)
        meta = read_json(directory / FILENAME)
        if meta.get("version") != VERSION:
            raise LmforgeError(f"{directory / FILENAME}: unknown version {meta.get('version')!r}")
        tok = cls.from_hf_dir(directory)
        tok.chat_template_source = meta.get("chat_template_source", tok.chat_template_source)
        if meta.get("hash") != tok.hash:
            raise LmforgeError(
                f"{directory}: tokenizer files have hash {tok.hash}, not the saved {meta.get('hash')}"
            )
        return tok


def _read_optional(path: Path) -> dict:
    data = read_json(path) if path.is_file() else {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{path}: expected a JSON object")
    return data
