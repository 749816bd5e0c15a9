"""Exact dedup (normalised-content hash, URL) and MinHash-LSH near dedup over the whole dataset.

Both run as barriers over what every task produced, in the staged shape of datatrove's
MinHash dedup (REFERENCE.md §1.7):

1. signatures: each task writes the signatures of its documents (`minhash.py`), in parallel;
2. buckets: band by band, rows of equal band values are found by sorting (np.lexsort), which
   yields candidate pairs; only one band's columns are in memory at a time (memory-mapped);
3. clusters: union-find (path compression, union by size) over the candidate pairs;
4. keep one document per cluster, the first in input order; the rest are removed.

Documents are addressed by their global index: task order, then position in the task, so the
result does not depend on how many workers ran the tasks. The runner and the dry-run preview
share `DedupKeys` (what each kept document contributes) and `dedup_reasons` (the decision).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import xxhash

from lmforge.data.documents import Document
from lmforge.data.minhash import MinHashConfig, MinHasher

_SPACE = re.compile(r"\s+")
# dedup_reasons codes -> (step, rule) as they appear in stats.json
DEDUP_REASONS = {
    1: ("exact_dedup", "duplicate_content"),
    2: ("exact_dedup", "duplicate_url"),
    3: ("minhash_dedup", "near_duplicate"),
}
_SIGNATURE_BATCH = 256


@dataclass
class ExactDedupConfig:
    content: bool = True  # normalised-content hash (lowercase, whitespace collapsed)
    url: bool = True  # metadata["url"], when present


def content_key(text: str) -> int:
    """64-bit hash of the normalised content: lowercase, whitespace runs collapsed, trimmed."""
    return xxhash.xxh3_64_intdigest(_SPACE.sub(" ", text.lower()).strip().encode("utf-8"))


def url_key(url: str | None) -> int:
    """64-bit hash of a URL (0: none); scheme and trailing slash do not matter."""
    if not url:
        return 0
    u = url.strip()
    u = re.sub(r"^[a-zA-Z]+://", "", u).rstrip("/")
    return xxhash.xxh3_64_intdigest(u.encode("utf-8")) or 1


def first_occurrence_duplicates(
    keys: np.ndarray, alive: np.ndarray | None = None, skip_zero: bool = False
) -> np.ndarray:
    """Indices whose key already appeared at a lower index (among `alive` ones)."""
    idx = np.arange(keys.size)
    mask = np.ones(keys.size, dtype=bool) if alive is None else alive.copy()
    if skip_zero:
        mask &= keys != 0
    idx, k = idx[mask], keys[mask]
    if k.size == 0:
        return np.empty(0, dtype=np.int64)
    _, first = np.unique(k, return_index=True)
    dup = np.ones(k.size, dtype=bool)
    dup[first] = False
    return idx[dup]


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return int(root)

    def roots(self) -> np.ndarray:
        """The root of every element (vectorised pointer jumping)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]


def band_pairs(band: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first, other) of candidate rows whose band values are all equal."""
    if candidates.size < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows = np.ascontiguousarray(band[candidates])
    order = np.lexsort(rows.T[::-1])
    s = rows[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    if not same.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # each row joins the row before it when equal: a chain per bucket is enough for union-find
    pos = np.flatnonzero(same)
    return candidates[order[pos]], candidates[order[pos + 1]]


def near_duplicates(
    signatures: np.ndarray | list[np.ndarray], bands: int, rows: int, alive: np.ndarray
) -> np.ndarray:
    """Indices to remove so that each LSH cluster keeps only its first (lowest-index) document.

    `signatures` is (n_docs, bands*rows) or a list of such parts in order (e.g. one memory-mapped
    file per task); only one band's columns (rows x 8 bytes per document) are read into memory
    at a time. `alive` marks the rows to consider.
    """
    parts = signatures if isinstance(signatures, list) else [signatures]
    n = sum(p.shape[0] for p in parts)
    candidates = np.flatnonzero(alive)
    if candidates.size == 0:
        return np.empty(0, dtype=np.int64)
    uf = UnionFind(n)
    for bi in range(bands):
        cols = slice(bi * rows, (bi + 1) * rows)
        band = (
            np.concatenate([np.asarray(p[:, cols]) for p in parts])
            if len(parts) > 1
            else np.asarray(parts[0][:, cols])
        )
        first, other = band_pairs(band, candidates)
        del band
        for x, y in zip(first.tolist(), other.tolist()):
            uf.union(x, y)
    roots = uf.roots()[candidates]
    # the kept document of a cluster is its lowest index; candidates are sorted, so the first seen
    _, first = np.unique(roots, return_index=True)
    remove = np.ones(candidates.size, dtype=bool)
    remove[first] = False
    return candidates[remove]


class DedupKeys:
    """Content/URL keys and MinHash signatures of documents, added in input order."""

    def __init__(self, exact: bool, minhash: MinHashConfig | None):
        self.exact = exact
        self.hasher = MinHasher(minhash.ngram, minhash.bands, minhash.rows, minhash.seed) if minhash else None
        self.width = minhash.bands * minhash.rows if minhash else 0
        self._keys: list[tuple[int, int]] = []
        self._sigs: list[np.ndarray] = []
        self._pending: list[str] = []

    def add(self, doc: Document) -> None:
        if self.exact:
            self._keys.append((content_key(doc.text), url_key(doc.metadata.get("url"))))
        if self.hasher is not None:
            self._pending.append(doc.text)
            if len(self._pending) >= _SIGNATURE_BATCH:
                self._flush()

    def _flush(self) -> None:
        if self._pending and self.hasher is not None:
            self._sigs.append(self.hasher.signatures(self._pending))
            self._pending.clear()

    def keys(self) -> np.ndarray:
        """(n, 2) uint64: content key, URL key (0: no URL)."""
        return np.array(self._keys, dtype=np.uint64).reshape(-1, 2)

    def signatures(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self._sigs) if self._sigs else np.empty((0, self.width), np.uint64)


def dedup_reasons(
    total: int,
    keys: np.ndarray | None,
    exact: ExactDedupConfig,
    signatures: list[np.ndarray] | None,
    minhash: MinHashConfig,
) -> np.ndarray:
    """Why each of `total` documents is removed (0: kept; codes in DEDUP_REASONS).

    `keys` (from DedupKeys, all tasks in order) is None without exact dedup; `signatures` (one
    part per task, may be memory-mapped) is None without MinHash dedup. Exact dedup runs first,
    then near dedup among the survivors, each keeping the first document in input order.
    """
    alive = np.ones(total, dtype=bool)
    reasons = np.zeros(total, dtype=np.int8)
    if keys is not None and total:
        if exact.content:
            dup = first_occurrence_duplicates(keys[:, 0], alive)
            alive[dup], reasons[dup] = False, 1
        if exact.url:
            dup = first_occurrence_duplicates(keys[:, 1], alive, skip_zero=True)
            alive[dup], reasons[dup] = False, 2
    if signatures is not None:
        parts = [p for p in signatures if p.shape[0]]
        # a document without words has an all-max signature: never anyone's near duplicate
        has_words = np.concatenate(
            [np.asarray(p[:, 0]) != np.iinfo(np.uint64).max for p in parts] or [np.zeros(0, bool)]
        )
        dup = (
            near_duplicates(parts, minhash.bands, minhash.rows, alive & has_words)
            if parts
            else np.empty(0, np.int64)
        )
        alive[dup], reasons[dup] = False, 3
    return reasons
