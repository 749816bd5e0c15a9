"""MinHash signatures over word n-grams, vectorised with numpy.

Same scheme as datatrove's `MinhashDedupSignature` (REFERENCE.md §1.6-1.7): the text is
simplified (lowercase, numbers -> 0, weekday and month names folded, punctuation -> space,
diacritics stripped, whitespace collapsed), split into words, and every word n-gram is hashed
to 64 bits; each of bands x rows permutations maps a shingle h to (a*h + b) mod (2^61 - 1)
in uint64 arithmetic (as datatrove computes it, wrap-around included) and keeps the minimum.
`a, b` come from `np.random.RandomState(seed)` exactly as datatrove draws them, so for equal
shingles the signatures are equal to datatrove's.

Unlike datatrove, shingles are not hashed one Python call per n-gram: each distinct word is
hashed once (xxh3-64) and n-gram hashes are combined from word hashes with numpy; signatures
of a whole batch of documents are computed with one `np.minimum.reduceat`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash

MERSENNE = np.uint64((1 << 61) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)
# stdlib `re` (its Unicode \d and \w) is faster here than the `regex` module's \p{..} classes
_NUMBERS = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")
_WEEKDAYS = re.compile(r"monday|tuesday|wednesday|thursday|friday|saturday|sunday")
_MONTHS = re.compile(r"january|february|march|april|may|june|july|august|september|october|november|december")
_PUNCT = re.compile(r"[^\w\s]+|_+")
_CHUNK = 1 << 14  # shingles per block when computing permutations (bounds memory to ~16 MB per block)


@dataclass
class MinHashConfig:
    ngram: int = 5  # words per shingle
    bands: int = 14  # LSH bands (bands x rows hash functions)
    rows: int = 8  # hash functions per band
    seed: int = 1  # seed of the hash functions
    # each band's buckets are split into this many hash ranges, one dedup task each; a task holds
    # about documents / bucket_shards rows of one band (dedup_stages.py)
    bucket_shards: int = 1


def simplify_text(text: str) -> str:
    text = text.lower()
    text = _NUMBERS.sub("0", text)
    if "day" in text:
        text = _WEEKDAYS.sub("WEEKDAY", text)
    text = _MONTHS.sub("MONTH", text)
    text = _PUNCT.sub(" ", text)
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each shape (num_perm,), drawn as datatrove draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(1, MERSENNE, dtype=np.uint64, size=(1, num_perm))
    b = gen.randint(0, MERSENNE, dtype=np.uint64, size=(1, num_perm))
    return a[0], b[0]


def word_hashes(words: list[str]) -> np.ndarray:
    """xxh3-64 of each word; each distinct word is hashed once."""
    table: dict[str, int] = dict.fromkeys(words, 0)
    for w in table:
        table[w] = xxhash.xxh3_64_intdigest(w.encode("utf-8"))
    return np.fromiter(map(table.__getitem__, words), dtype=np.uint64, count=len(words))


def shingles(text: str, ngram: int) -> np.ndarray:
    """uint64 hashes of the word n-grams of the simplified text (unique). A text shorter than
    n words is one shingle; a text with no words has none."""
    words = simplify_text(text).split()
    if not words:
        return np.empty(0, dtype=np.uint64)
    h = word_hashes(words)
    n = min(ngram, h.size)
    m = h.size - n + 1
    with np.errstate(over="ignore"):
        g = h[:m].copy()
        for k in range(1, n):
            g = g * _MIX + h[k : k + m]
    return np.unique(g)


def permute(sh: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a*h + b) mod 2^64, then mod 2^61-1 without a division: 2^61 = 1 (mod 2^61-1)."""
    with np.errstate(over="ignore"):
        y = sh[:, None] * a[None, :]
        y += b[None, :]
    r = y & MERSENNE
    y >>= np.uint64(61)
    r += y
    r[r >= MERSENNE] -= MERSENNE
    return r


def signature_from_shingles(sh: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Min over shingles of (a*h + b) mod (2^61 - 1): shape (num_perm,). Empty input -> all max."""
    out = np.full(a.size, np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, sh.size, _CHUNK):
            np.minimum(out, permute(sh[s : s + _CHUNK], a, b).min(axis=0), out=out)
    return out


def batch_signatures(shingle_sets: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signatures of many documents at once: (n_docs, num_perm). Empty sets give all-max rows."""
    n = len(shingle_sets)
    out = np.full((n, a.size), np.iinfo(np.uint64).max, dtype=np.uint64)
    sizes = np.fromiter((s.size for s in shingle_sets), dtype=np.int64, count=n)
    nonempty = np.flatnonzero(sizes)
    if nonempty.size == 0:
        return out
    # Group documents into blocks of about _CHUNK shingles; huge documents go alone, in chunks.
    start = 0
    while start < nonempty.size:
        stop, total = start, 0
        while stop < nonempty.size and (total == 0 or total + sizes[nonempty[stop]] <= _CHUNK):
            total += sizes[nonempty[stop]]
            stop += 1
        docs = nonempty[start:stop]
        if docs.size == 1 and total > _CHUNK:
            out[docs[0]] = signature_from_shingles(shingle_sets[docs[0]], a, b)
        else:
            flat = np.concatenate([shingle_sets[i] for i in docs])
            phv = permute(flat, a, b)
            offsets = np.concatenate(([0], np.cumsum(sizes[docs])[:-1]))
            out[docs] = np.minimum.reduceat(phv, offsets, axis=0)
        start = stop
    return out


class MinHasher:
    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram, self.bands, self.rows = ngram, bands, rows
        self.a, self.b = permutations(bands * rows, seed)

    def signatures(self, texts: list[str]) -> np.ndarray:
        return batch_signatures([shingles(t, self.ngram) for t in texts], self.a, self.b)


def estimate_jaccard(sig1: np.ndarray, sig2: np.ndarray) -> float:
    return float(np.mean(sig1 == sig2))
