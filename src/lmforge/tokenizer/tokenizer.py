"""The Tokenizer: encode/decode/batch, special tokens, chat rendering, save/load, exports.

Ids 0-255 are bytes, merge ``i`` is id ``256 + i``, special tokens come after the merges in the
order given. `encode` uses tiktoken (an `Encoding` built from our ranks) when it is installed;
the pure-Python encoder of `bpe.py` is the reference and the fallback, and both give identical ids.

On disk (`save`): ``lmforge_tokenizer.json`` ({"format": "lmforge-bpe", "version": 1, pattern,
merges as [left id, right id] pairs, special tokens}) plus the Hugging Face files of `save_hf`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, read_json
from lmforge.tokenizer.bpe import (
    bytes_to_unicode,
    count_chunks,
    encode_symbols,
    learn_merges,
    merge_ranks,
    symbols,
    vocab_bytes,
)
from lmforge.tokenizer.patterns import PATTERNS, compile_pattern, resolve_pattern
from lmforge.tokenizer.specials import (
    BOS,
    DEFAULT_SPECIALS,
    END,
    EOS,
    ROLES,
    check_conversation,
    check_special,
)

FORMAT = "lmforge-bpe"
VERSION = 1
FILENAME = "lmforge_tokenizer.json"
HF_FORMAT = "hf-tokenizers"  # lmforge_tokenizer.json of a tokenizer.json kept as-is (hf_tokenizer.py)


class Tokenizer:
    """A byte-level BPE tokenizer: a split pattern, an ordered list of merges, special tokens."""

    def __init__(
        self, merges: Sequence[Sequence[int]], pattern: str = "gpt4", special_tokens: Iterable[str] = ()
    ):
        self.pattern = resolve_pattern(pattern)
        self.merges: list[tuple[int, int]] = []
        for i, m in enumerate(merges):
            if len(m) != 2 or not all(isinstance(x, int) and 0 <= x < 256 + i for x in m):
                raise LmforgeError(f"merge {i} is {list(m)!r}: expected two ids below {256 + i}")
            self.merges.append((int(m[0]), int(m[1])))
        self._vocab = vocab_bytes(self.merges)
        if len(set(self._vocab)) != len(self._vocab):
            raise LmforgeError("two merges produce the same bytes; every token must have distinct bytes")
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
            raise LmforgeError(f"special tokens must be distinct non-empty strings, got {specials!r}")
        self.special_ids: dict[str, int] = {s: len(self._vocab) + i for i, s in enumerate(specials)}
        self._id_bytes = self._vocab + [s.encode("utf-8") for s in specials]
        self._ranks = merge_ranks(self.merges)
        self._cache: dict[str, list[int]] = {}
        self.train_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = "gpt4",
        special_tokens: Iterable[str] | None = None,
        workers: int = 0,
        max_chars: int = 0,
        progress: bool = True,
    ) -> Tokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `texts` (an iterable, streamed).

        `workers` processes count chunks (0: all cores); `max_chars` > 0 caps the training text.
        """
        import time

        specials = DEFAULT_SPECIALS if special_tokens is None else list(special_tokens)
        if vocab_size < 256 + len(specials):
            raise LmforgeError(
                f"vocab_size {vocab_size} is too small: it must be at least 256 bytes + "
                f"{len(specials)} special tokens = {256 + len(specials)}"
            )
        if isinstance(texts, str):
            texts = [texts]
        regex = resolve_pattern(pattern)
        t0 = time.time()
        counts, n_chars = count_chunks(texts, regex, workers=workers, max_chars=max_chars, progress=progress)
        if n_chars == 0:
            raise LmforgeError("no text to train the tokenizer on (the inputs are empty)")
        t1 = time.time()
        merges = learn_merges(counts, vocab_size - 256 - len(specials), progress=progress)
        tok = cls(merges, regex, specials)
        tok.train_stats = {
            "chars": n_chars,
            "distinct_chunks": len(counts),
            "merges": len(merges),
            "count_seconds": round(t1 - t0, 3),
            "merge_seconds": round(time.time() - t1, 3),
        }
        return tok

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @property
    def pattern_name(self) -> str | None:
        return next((name for name, p in PATTERNS.items() if p == self.pattern), None)

    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get(BOS)

    @property
    def eos_id(self) -> int | None:
        return self.special_ids.get(EOS)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of every id (0 for special tokens), for bits-per-byte."""
        return [len(b) for b in self._vocab] + [0] * len(self.special_ids)

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._id_bytes[token_id]

    @cached_property
    def hash(self) -> str:
        """A stable content hash (pattern, merges, special tokens); stored in shard meta and checkpoints."""
        blob = json.dumps(
            {"pattern": self.pattern, "merges": self.merges, "special_tokens": list(self.special_ids)},
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without caches (the tiktoken encoder is rebuilt on first use)."""
        state = dict(self.__dict__)
        state.pop("_tiktoken", None)
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern_name or 'custom'}, "
            f"hash={self.hash})"
        )

    # ------------------------------------------------------------------ encoding

    @cached_property
    def _tiktoken(self):  # -> tiktoken.Encoding | None
        try:
            return self.to_tiktoken()
        except ImportError:
            return None

    def _check_special(
        self, text: str, allowed_special: set[str] | str, disallowed_special: set[str] | str
    ) -> set[str]:
        return check_special(set(self.special_ids), text, allowed_special, disallowed_special)

    def encode(
        self,
        text: str,
        allowed_special: set[str] | str = frozenset(),
        disallowed_special: set[str] | str = "all",
    ) -> list[int]:
        """Text -> ids. Special-token strings in the text are refused unless allowed (as tiktoken does)."""
        allowed = self._check_special(text, allowed_special, disallowed_special)
        enc = self._tiktoken
        if enc is not None:
            return enc.encode(text, allowed_special=allowed, disallowed_special=())
        return self.encode_reference(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating special-token strings as plain text."""
        enc = self._tiktoken
        if enc is not None:
            return enc.encode_ordinary(text)
        return self.encode_reference(text)

    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = 8,
        allowed_special: set[str] | str = frozenset(),
        disallowed_special: set[str] | str = "all",
    ) -> list[list[int]]:
        """Encode many texts; with tiktoken the work runs on `num_threads` threads (the GIL is released)."""
        allowed = set()
        for text in texts:
            allowed = self._check_special(text, allowed_special, disallowed_special)
        enc = self._tiktoken
        if enc is None:
            return [self.encode_reference(t, allowed) for t in texts]
        if not allowed:
            return enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
        return enc.encode_batch(
            list(texts), num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def encode_reference(self, text: str, allowed_special: Iterable[str] = ()) -> list[int]:
        """The pure-Python encoder (reference and fallback): no special-token check here."""
        allowed = sorted(allowed_special, key=len, reverse=True)
        if not allowed:
            return self._encode_plain(text)
        import regex

        ids: list[int] = []
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in allowed) + ")")
        for i, part in enumerate(splitter.split(text)):
            if i % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in compile_pattern(self.pattern).findall(text):
            out = cache.get(chunk)
            if out is None:
                out = [ord(c) for c in encode_symbols(symbols(chunk), self._ranks)]
                if len(cache) < 200_000:
                    cache[chunk] = out
            ids.extend(out)
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_bytes
        try:
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < len(table))
            raise LmforgeError(f"token id {bad!r} is not in the vocabulary (0..{len(table) - 1})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (invalid UTF-8 across a cut becomes U+FFFD, as in tiktoken and HF)."""
        ids = list(ids)
        if any(i < 0 for i in ids):
            raise LmforgeError(f"token id {min(ids)} is not in the vocabulary (0..{self.vocab_size - 1})")
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ chat

    def render_chat(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """THE chat template: ``<|bos|>`` then ``<|ROLE|>`` content ``<|end|>`` per message.

        Returns (ids, mask): mask is 1 exactly on assistant content tokens and the ``<|end|>``
        that closes an assistant turn, 0 elsewhere. With `add_generation_prompt` a trailing
        ``<|assistant|>`` (mask 0) asks the model for the next turn.
        """
        need = [BOS, END] + [f"<|{r}|>" for r in ROLES]
        missing = [s for s in need if s not in self.special_ids]
        if missing:
            raise LmforgeError(f"this tokenizer lacks the chat special tokens {missing}")
        ids, mask = [self.special_ids[BOS]], [0]
        for role, content in check_conversation(messages):
            flag = 1 if role == "assistant" else 0
            body = self.encode_ordinary(content)
            ids += [self.special_ids[f"<|{role}|>"], *body, self.special_ids[END]]
            mask += [0] + [flag] * (len(body) + 1)
        if add_generation_prompt:
            ids.append(self.special_ids["<|assistant|>"])
            mask.append(0)
        return ids, mask

    @property
    def chat_template_jinja(self) -> str:
        """The same template for transformers' `apply_chat_template` (identical ids)."""
        return (
            "{{ '<|bos|>' }}"
            "{% for message in messages %}"
            "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('unknown role ' + message['role'] + "
            "': expected system, user or assistant') }}"
            "{% elif message['role'] == 'system' and not loop.first %}"
            "{{ raise_exception('a system message may only come first') }}"
            "{% endif %}"
            "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
        )

    # ------------------------------------------------------------------ save / load / export

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            "special_tokens": self.special_ids,
            "merges": [list(m) for m in self.merges],
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write lmforge_tokenizer.json (our format) plus the Hugging Face files into `directory`."""
        directory = Path(directory)
        atomic_write_json(directory / FILENAME, self.to_dict())
        self.save_hf(directory)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Load a directory written by `save` (or the lmforge_tokenizer.json file itself). A directory
        that keeps a model's own tokenizer.json (`HFTokenizer.save`) loads as an HFTokenizer."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() or not path.suffix else path
        if not file.exists():
            raise LmforgeError(
                f"{file}: no tokenizer here (expected {FILENAME}, written by `lmforge tokenizer train`)"
            )
        data = read_json(file)
        if isinstance(data, dict) and data.get("format") == HF_FORMAT:
            from lmforge.tokenizer.hf_tokenizer import HFTokenizer

            return HFTokenizer.load(file.parent)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LmforgeError(f'{file}: not an lmforge tokenizer (expected "format": "{FORMAT}")')
        if data.get("version") != VERSION:
            raise LmforgeError(
                f"{file}: unknown tokenizer format version {data.get('version')!r} "
                f"(this lmforge reads version {VERSION})"
            )
        try:
            specials = data["special_tokens"]
            n = 256 + len(data["merges"])
            order = sorted(specials, key=specials.get)
            if [specials[s] for s in order] != list(range(n, n + len(order))):
                raise LmforgeError(f"{file}: special token ids must follow the merges ({n}, {n + 1}, ...)")
            tok = cls(data["merges"], data["pattern"], order)
        except (KeyError, TypeError, AttributeError) as e:
            raise LmforgeError(f"{file}: malformed tokenizer file ({type(e).__name__}: {e})") from None
        except LmforgeError as e:
            raise LmforgeError(f"{file}: {e}") from None
        return tok

    def to_tiktoken(self):  # -> tiktoken.Encoding
        """A `tiktoken.Encoding` built from our ranks (the encode fast path); ids identical to ours."""
        import tiktoken

        return tiktoken.Encoding(
            name=f"lmforge-{self.hash}",
            pat_str=self.pattern,
            mergeable_ranks={b: i for i, b in enumerate(self._vocab)},
            special_tokens=dict(self.special_ids),
            explicit_n_vocab=self.vocab_size,
        )

    def save_hf(self, directory: str | os.PathLike) -> Path:
        """tokenizer.json + tokenizer_config.json + special_tokens_map.json for HF tokenizers/transformers."""
        directory = Path(directory)
        for name, obj in hf_files(self).items():
            atomic_write_json(directory / name, obj)
        return directory


# ---------------------------------------------------------------------------- Hugging Face files


def hf_files(tok: Tokenizer) -> dict[str, dict]:
    """The three JSON files of a Hugging Face fast tokenizer, as dicts."""
    if not isinstance(tok, Tokenizer):
        raise LmforgeError(
            "this model keeps its own tokenizer.json (not lmforge's byte-level BPE), which has no "
            "lmforge BPE form: it exports to Hugging Face only, as it came in"
        )
    chars = bytes_to_unicode()

    def piece(token_id: int) -> str:
        return "".join(chars[b] for b in tok.id_to_bytes(token_id))

    n_plain = 256 + len(tok.merges)
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in tok.special_ids.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {piece(i): i for i in range(n_plain)},
            "merges": [[piece(a), piece(b)] for a, b in tok.merges],
        },
    }
    named = {"bos_token": BOS, "eos_token": EOS}
    present = {k: v for k, v in named.items() if v in tok.special_ids}
    others = [s for s in tok.special_ids if s not in present.values()]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **present,
        "additional_special_tokens": others,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "chat_template": tok.chat_template_jinja,
        "lmforge_hash": tok.hash,
    }
    special_map = {**present, "additional_special_tokens": others}
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": config,
        "special_tokens_map.json": special_map,
    }
