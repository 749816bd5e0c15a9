"""Quality filters: Gopher quality, Gopher repetition, C4 (line and document rules), FineWeb.

Rules and default thresholds follow datatrove's filters (REFERENCE.md §1.1-1.4); each step
returns the document (kept, possibly with lines removed) or the name of the first rule that
dropped it. Rule names are also the toggles: list one in the section's `disable` to turn it off.

Speed: a document is split into words once (`TextView`) and every filter reuses the split;
per-word properties are computed once per distinct word; repeated n-grams are found with
numpy over integer word ids instead of joined strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import regex

from lmforge.data.documents import Document
from lmforge.data.step import Step

# A word is a run of letters/digits (apostrophes inside words allowed), or a run of other
# non-space characters (which datatrove's Gopher rules call "symbol words"). stdlib `re`:
# its Unicode \w is faster here than the `regex` module's \p{..} classes.
WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]+|_+")
_STERM = regex.compile(r"\p{Sentence_Terminal}")

GOPHER_QUALITY_RULES = (
    "short_doc",
    "long_doc",
    "short_words",
    "long_words",
    "hashes",
    "ellipsis",
    "bullets",
    "end_ellipsis",
    "alpha_words",
    "stop_words",
)
C4_RULES = (
    "too_long_word",
    "citations",
    "no_terminal_punct",
    "too_few_words",
    "lorem_ipsum",
    "javascript",
    "curly_bracket",
    "policy",
    "too_few_sentences",
)
FINEWEB_RULES = ("line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio")


@dataclass
class GopherQualityConfig:
    min_doc_words: int = 50  # fewest words a kept document may have
    max_doc_words: int = 100_000  # most words a kept document may have
    min_avg_word_length: float = 3.0  # shortest mean word length, in characters
    max_avg_word_length: float = 10.0  # longest mean word length, in characters
    max_symbol_word_ratio: float = 0.1  # most '#' and '...' per word
    max_bullet_lines_ratio: float = 0.9  # most lines that start with a bullet, as a fraction of lines
    max_ellipsis_lines_ratio: float = 0.3  # most lines that end in an ellipsis, as a fraction of lines
    min_alpha_words_ratio: float = 0.8  # fewest words with a letter, as a fraction of words
    min_stop_words: int = 2  # fewest stop words (from stop_words) a kept document may have
    # the words min_stop_words counts
    stop_words: list[str] = field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"]
    )
    # datatrove: punctuation runs are words of their own ("symbol words"), left out of the counts
    # and lengths but in the alpha-word ratio's denominator, as datatrove has it; whitespace: the
    # words are what whitespace separates, punctuation attached, as the Gopher paper counts them
    word_split: str = "datatrove"
    disable: list[str] = field(default_factory=list)  # rules to switch off (the reason names in stats.json)


WORD_SPLITS = ("datatrove", "whitespace")


@dataclass
class GopherRepetitionConfig:
    dup_para_frac: float = 0.3  # most duplicated paragraphs, as a fraction of paragraphs
    dup_para_char_frac: float = 0.2  # most characters in duplicated paragraphs, as a fraction of characters
    dup_line_frac: float = 0.3  # most duplicated lines, as a fraction of lines
    dup_line_char_frac: float = 0.2  # most characters in duplicated lines, as a fraction of characters
    # n -> most characters in the most frequent n-gram, as a fraction
    top_n_grams: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    # n -> most characters in duplicated n-grams, as a fraction
    dup_n_grams: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    disable: list[str] = field(default_factory=list)  # rules to switch off (the reason names in stats.json)


@dataclass
class C4Config:
    remove_citations: bool = True  # strip Wikipedia-style [1] citation marks
    filter_no_terminal_punct: bool = True  # drop lines that do not end in terminal punctuation
    min_num_sentences: int = 5  # fewest sentences a kept document may have
    min_words_per_line: int = 3  # lines with fewer words are dropped
    max_word_length: int = 1000  # documents with a longer word are dropped, in characters
    disable: list[str] = field(default_factory=list)  # line rules and doc rules alike


@dataclass
class FineWebConfig:
    line_punct_thr: float = 0.12  # fewest lines ending in punctuation, as a fraction of lines
    line_punct_exclude_zero: bool = False  # true: a document with no such line passes the line_punct rule
    short_line_thr: float = 0.67  # most short lines, as a fraction of lines
    short_line_length: int = 30  # a line this many characters or shorter is short
    char_duplicates_ratio: float = 0.01  # most characters in duplicated lines, as a fraction of characters
    new_line_ratio: float = 0.3  # most newlines per word
    disable: list[str] = field(default_factory=list)  # rules to switch off (the reason names in stats.json)


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text)


@lru_cache(maxsize=4096)
def _is_terminal(ch: str) -> bool:
    return bool(_STERM.match(ch))


class TextView:
    """One document's words; their integer ids and per-distinct-word properties on first use."""

    __slots__ = ("text", "words", "_ids", "vocab", "word_len", "is_symbol", "has_alpha")

    def __init__(self, text: str, words: list[str] | None = None):
        self.text = text
        self.words = split_words(text) if words is None else words
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            vocab: dict[str, int] = dict.fromkeys(self.words, 0)
            for i, w in enumerate(vocab):
                vocab[w] = i
            self._ids = np.fromiter(map(vocab.__getitem__, self.words), dtype=np.int64, count=len(self.words))
            self.vocab = vocab
            distinct = list(vocab)
            n = len(distinct)
            self.word_len = np.fromiter(map(len, distinct), dtype=np.int64, count=n)
            # WORD_RE makes homogeneous tokens: a letters/digits run, or a run with none of them
            # (a whitespace word is a symbol word only when it holds no letter or digit)
            self.is_symbol = np.fromiter(
                (not any(map(str.isalnum, w)) for w in distinct), dtype=bool, count=n
            )
            self.has_alpha = np.fromiter((any(map(str.isalpha, w)) for w in distinct), dtype=bool, count=n)
        return self._ids


_view_cache: list = [None, None]


def view_of(text: str) -> TextView:
    """The TextView of `text`, reused while the same string object flows through the filters."""
    if _view_cache[0] is not text:
        _view_cache[0], _view_cache[1] = text, TextView(text)
    return _view_cache[1]


class FilterStep(Step):
    """Base of the filter steps: named rules that can be disabled; `check(doc)` names the first that drops."""

    rules: tuple[str, ...] = ()

    def __init__(self, cfg: object, disable: list[str]):
        super().__init__(cfg)
        unknown = set(disable) - set(self.rules)
        if unknown:
            from lmforge.errors import LmforgeError

            raise LmforgeError(
                f"data.{self.name}.disable: unknown rule(s) {sorted(unknown)} "
                f"(rules: {', '.join(self.rules)})"
            )
        self.enabled = set(self.rules) - set(disable)

    def __call__(self, doc: Document) -> Document | str:
        reason = self.check(doc)
        return reason if reason else doc

    def check(self, doc: Document) -> str | None:
        raise NotImplementedError


# ---------------------------------------------------------------------------- Gopher quality


class GopherQuality(FilterStep):
    name = "gopher_quality"
    rules = GOPHER_QUALITY_RULES
    cfg: GopherQualityConfig

    def __init__(self, cfg: GopherQualityConfig):
        if cfg.word_split not in WORD_SPLITS:
            from lmforge.errors import LmforgeError

            raise LmforgeError(
                f"data.gopher_quality.word_split must be one of {', '.join(WORD_SPLITS)}, "
                f"got {cfg.word_split!r}"
            )
        super().__init__(cfg, cfg.disable)
        self.stop_words = set(cfg.stop_words)
        self.whitespace = cfg.word_split == "whitespace"

    def check(self, doc: Document) -> str | None:
        c, on, text = self.cfg, self.enabled, doc.text
        v = TextView(text, text.split()) if self.whitespace else view_of(text)
        n_words = len(v.words)
        ids = v.ids
        sym = np.zeros(ids.size, dtype=bool) if self.whitespace else v.is_symbol[ids]
        non_symbol_lens = v.word_len[ids][~sym]
        n_ns = non_symbol_lens.size
        if "short_doc" in on and n_ns < c.min_doc_words:
            return "short_doc"
        if "long_doc" in on and n_ns > c.max_doc_words:
            return "long_doc"
        if n_words == 0 or n_ns == 0:
            return "empty"  # no words at all: nothing below can be measured
        avg = float(non_symbol_lens.mean())
        if "short_words" in on and avg < c.min_avg_word_length:
            return "short_words"
        if "long_words" in on and avg > c.max_avg_word_length:
            return "long_words"
        if "hashes" in on and text.count("#") / n_words > c.max_symbol_word_ratio:
            return "hashes"
        if "ellipsis" in on and (text.count("...") + text.count("…")) / n_words > c.max_symbol_word_ratio:
            return "ellipsis"
        lines = text.splitlines() or [""]
        if "bullets" in on:
            bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
            if bullets / len(lines) > c.max_bullet_lines_ratio:
                return "bullets"
        if "end_ellipsis" in on:
            ends = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
            if ends / len(lines) > c.max_ellipsis_lines_ratio:
                return "end_ellipsis"
        if "alpha_words" in on and v.has_alpha[v.ids].sum() / n_words < c.min_alpha_words_ratio:
            return "alpha_words"
        if "stop_words" in on and len(self.stop_words.intersection(self._bare_words(v))) < c.min_stop_words:
            return "stop_words"
        return None

    def _bare_words(self, v: TextView) -> set[str] | dict[str, int]:
        """The distinct words, with the punctuation around whitespace words stripped."""
        return {_EDGE_PUNCTUATION.sub("", w) for w in v.vocab} if self.whitespace else v.vocab


_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


# ---------------------------------------------------------------------------- Gopher repetition

_PARA_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in them)."""
    seen: set[str] = set()
    dup = chars = 0
    for x in items:
        if x in seen:
            dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return dup, chars


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit key per n-gram of word ids (polynomial mix; collisions ~2^-64)."""
    m = ids.size - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    u = ids.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        h = u[:m].copy()
        for k in range(1, n):
            h = h * _MIX + u[k : k + m]
    return h


def window_sums(values: np.ndarray, n: int) -> np.ndarray:
    c = np.concatenate(([0], np.cumsum(values)))
    return c[n:] - c[:-n]


def top_ngram_chars(keys: np.ndarray, lens: np.ndarray, n: int) -> int:
    """len(" ".join(top n-gram)) x its count; ties go to the n-gram seen first (Counter.most_common)."""
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = counts.max()
    pos = first[counts == best].min()
    return int((window_sums(lens, n)[pos] + n - 1) * best)


def duplicated_ngram_chars(keys: np.ndarray, lens: np.ndarray, n: int) -> int:
    """Characters in repeated n-grams, skipping n words after each repeat (datatrove find_all_duplicate).

    Only positions whose n-gram occurs more than once can repeat or be repeated, so the scan
    visits just those: a unique n-gram joins the seen set but never matches anything later.
    """
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    relevant = np.flatnonzero(counts[inverse] > 1)
    if relevant.size == 0:
        return 0
    chars = window_sums(lens, n)[relevant].tolist()
    seen: set[int] = set()
    total, next_allowed = 0, 0
    for p, k, c in zip(relevant.tolist(), inverse[relevant].tolist(), chars):
        if p < next_allowed:
            continue
        if k in seen:
            total += c
            next_allowed = p + n
        else:
            seen.add(k)
    return total


class GopherRepetition(FilterStep):
    name = "gopher_repetition"
    cfg: GopherRepetitionConfig

    def __init__(self, cfg: GopherRepetitionConfig):
        self.top = sorted((int(n), float(f)) for n, f in cfg.top_n_grams.items())
        self.dup = sorted((int(n), float(f)) for n, f in cfg.dup_n_grams.items())
        self.rules = (
            "dup_para_frac",
            "dup_para_char_frac",
            "dup_line_frac",
            "dup_line_char_frac",
            *(f"top_{n}_gram" for n, _ in self.top),
            *(f"duplicated_{n}_n_grams" for n, _ in self.dup),
        )
        super().__init__(cfg, cfg.disable)

    def check(self, doc: Document) -> str | None:
        c, on, text = self.cfg, self.enabled, doc.text
        if not text:
            return "empty"
        paragraphs = _PARA_SPLIT.split(text.strip())
        dup, chars = find_duplicates(paragraphs)
        if "dup_para_frac" in on and dup / len(paragraphs) > c.dup_para_frac:
            return "dup_para_frac"
        if "dup_para_char_frac" in on and chars / len(text) > c.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINE_SPLIT.split(text)
        dup, chars = find_duplicates(lines)
        if "dup_line_frac" in on and dup / len(lines) > c.dup_line_frac:
            return "dup_line_frac"
        if "dup_line_char_frac" in on and chars / len(text) > c.dup_line_char_frac:
            return "dup_line_char_frac"
        v = view_of(text)
        ids = v.ids
        lens = v.word_len[ids]
        for n, frac in self.top:
            keys = ngram_keys(ids, n)
            if keys.size and f"top_{n}_gram" in on and top_ngram_chars(keys, lens, n) / len(text) > frac:
                return f"top_{n}_gram"
        for n, frac in self.dup:
            keys = ngram_keys(ids, n)
            if keys.size == 0 or f"duplicated_{n}_n_grams" not in on:
                continue
            dup_chars = duplicated_ngram_chars(keys, lens, n)
            if dup_chars / len(text) > frac:
                return f"duplicated_{n}_n_grams"
            if dup_chars == 0:
                break  # no repeated n-gram means no repeated longer n-gram either
        return None


# ---------------------------------------------------------------------------- C4

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCT = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_POLICY_RE = re.compile("|".join(map(re.escape, _POLICY)))
_SENTENCE_BREAK = re.compile(r"[.!?]+['\"”’)\]]*\s+(?=\S)")


class C4(FilterStep):
    """C4's line rules (lines are removed, the document keeps the rest) and document rules."""

    name = "c4"
    rules = C4_RULES
    cfg: C4Config

    def __init__(self, cfg: C4Config):
        disable = list(cfg.disable)
        if not cfg.filter_no_terminal_punct:
            disable.append("no_terminal_punct")
        if not cfg.remove_citations:
            disable.append("citations")
        super().__init__(cfg, sorted(set(disable)))

    def check(self, doc: Document) -> str | None:
        c, on = self.cfg, self.enabled
        kept: list[str] = []
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            words = line.split()
            if "too_long_word" in on and words and max(map(len, words)) > c.max_word_length:
                self.counters["lines_removed_too_long_word"] += 1
                continue
            if "citations" in on:
                line = _CITATION.sub("", line)
            if "no_terminal_punct" in on and (not line.endswith(_END_PUNCT) or line.endswith("...")):
                self.counters["lines_removed_no_terminal_punct"] += 1
                continue
            if "too_few_words" in on and len(words) < c.min_words_per_line:
                self.counters["lines_removed_too_few_words"] += 1
                continue
            lower = line.lower()
            if "lorem_ipsum" in on and "lorem ipsum" in lower:
                return "lorem_ipsum"
            if "javascript" in on and "javascript" in lower:
                self.counters["lines_removed_javascript"] += 1
                continue
            if "curly_bracket" in on and "{" in line:
                return "curly_bracket"
            if "policy" in on and _POLICY_RE.search(lower):
                self.counters["lines_removed_policy"] += 1
                continue
            sentences += 1 + len(_SENTENCE_BREAK.findall(line))
            kept.append(line)
        if "too_few_sentences" in on and sentences < c.min_num_sentences:
            return "too_few_sentences"
        text = "\n".join(kept).strip()
        if not text:
            return "empty"
        doc.text = text + "\n"
        return None


# ---------------------------------------------------------------------------- FineWeb


class FineWeb(FilterStep):
    name = "fineweb"
    rules = FINEWEB_RULES
    cfg: FineWebConfig

    def __init__(self, cfg: FineWebConfig):
        super().__init__(cfg, cfg.disable)

    def check(self, doc: Document) -> str | None:
        c, on, text = self.cfg, self.enabled, doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty"
        if "line_punct_ratio" in on:
            ratio = sum(1 for line in lines if _is_terminal(line[-1])) / len(lines)
            if ratio < c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
                return "line_punct_ratio"
        if "short_line_ratio" in on:
            if sum(1 for line in lines if len(line) <= c.short_line_length) / len(lines) > c.short_line_thr:
                return "short_line_ratio"
        if "char_dup_ratio" in on:
            chars = len(text) - text.count("\n")
            if chars and find_duplicates(lines)[1] / chars > c.char_duplicates_ratio:
                return "char_dup_ratio"
        if "list_ratio" in on:
            n_words = len(view_of(text).words)
            if n_words == 0 or text.count("\n") / n_words > c.new_line_ratio:
                return "list_ratio"
        return None
