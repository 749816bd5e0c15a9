"""Exact dedup (normalised-content hash, URL) and MinHash-LSH near dedup over the whole dataset.

Both run as barriers over what every task produced, in the staged shape of datatrove's
MinHash dedup (REFERENCE.md §1.7):

1. signatures: each task writes the signatures of its documents (`minhash.py`), in parallel;
2. buckets: band by band, rows of equal band values are found by sorting (np.lexsort), which
   yields candidate pairs; only one band's columns are in memory at a time (memory-mapped);
3. clusters: union-find (path compression, union by size) over the candidate pairs;
4. keep one document per cluster, the first in input order; the rest are removed.

Documents are addressed by their global index: task order, then position in the task, so the
result does not depend on how many workers ran the tasks.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_SPACE = re.compile(r"\s+")


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


def first_occurrence_duplicates(keys: np.ndarray, alive: np.ndarray | None = None, skip_zero: bool = False) -> np.ndarray:
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


def near_duplicates(signatures: np.ndarray | list[np.ndarray], bands: int, rows: int, alive: np.ndarray) -> np.ndarray:
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
        band = np.concatenate([np.asarray(p[:, cols]) for p in parts]) if len(parts) > 1 else np.asarray(parts[0][:, cols])
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
