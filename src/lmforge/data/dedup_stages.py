"""MinHash-LSH near dedup as sharded stages, so that no step holds every signature.

The four stages of datatrove's MinHash dedup (REFERENCE.md §1.7), each a set of tasks:

1. signatures, per input task: the task's signatures cut into bands; each band's rows are
   saved with a 64-bit hash of the row and the document's index in the task, sorted by the hash
   (`band_buckets`);
2. buckets, one task per (band, hash range): documents whose band hash falls in the range are
   read from every input task (a binary search in each sorted, memory-mapped file), and rows
   with equal band values become candidate pairs (`bucket_pairs`). Equal rows have equal hashes,
   so every bucket lies in one range; the hash is uniform (MinHash values themselves are minima,
   crowded near zero), so a task holds about documents / minhash.bucket_shards rows of one band;
3. clusters, one task: connected components of the pairs (`cluster_duplicates`); only documents
   that have a pair are held, never a signature;
4. filtering, per input task: the runner's write phase drops the removed documents.

The result equals the single-process `dedup.near_duplicates`: the same candidates (documents with
words that exact dedup kept), the same buckets, the first document in input order kept per cluster.
"""

from __future__ import annotations

import os

import numpy as np

from lmforge.data.dedup import band_pairs

_NO_WORDS = np.iinfo(np.uint64).max  # every value of a signature without shingles
_SPAN = 1 << 64


def band_hash(rows: np.ndarray) -> np.ndarray:
    """A uniform 64-bit hash of each row of band values (splitmix64 over a multiply-xor chain)."""
    with np.errstate(over="ignore"):
        h = np.full(rows.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
        for j in range(rows.shape[1]):
            h = (h ^ rows[:, j]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def band_buckets(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, m, rows + 2) uint64: per band and document with words (m of them), the band hash,
    the band's values and the document's index in `signatures`, sorted by the hash."""
    has_words = np.flatnonzero(signatures[:, 0] != _NO_WORDS)
    out = np.empty((bands, has_words.size, rows + 2), dtype=np.uint64)
    for b in range(bands):
        block = signatures[has_words, b * rows : (b + 1) * rows]
        key = band_hash(block)
        order = np.argsort(key, kind="stable")
        out[b, :, 0] = key[order]
        out[b, :, 1 : rows + 1] = block[order]
        out[b, :, rows + 1] = has_words[order]
    return out


def hash_range(shard: int, shards: int) -> tuple[int, int]:
    """[lo, hi) of the band hashes that bucket shard `shard` of `shards` owns."""
    return shard * _SPAN // shards, (shard + 1) * _SPAN // shards


class BucketFile:
    """One band of a task's saved `band_buckets`, read with positioned reads: a binary search reads
    about log2(n) entries and a hash range is read whole, and nothing is memory-mapped, so a bucket
    task's resident memory is what it holds, not the pages it looked at."""

    def __init__(self, path: str | os.PathLike, band: int):
        with open(path, "rb") as f:
            fmt = np.lib.format
            header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            (_, self.rows, self.width), _, _ = header(f)
            self.offset = f.tell() + band * self.rows * self.width * 8
        self.path = path

    def read(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.width * 8)
            return np.fromfile(f, np.uint64, (stop - start) * self.width).reshape(-1, self.width)

    def first_at_least(self, value: int) -> int:
        """The first row whose band hash is >= `value` (binary search)."""
        lo, hi = 0, self.rows
        with open(self.path, "rb") as f:
            while lo < hi:
                mid = (lo + hi) // 2
                key = os.pread(f.fileno(), 8, self.offset + mid * self.width * 8)
                if int(np.frombuffer(key, np.uint64)[0]) < value:
                    lo = mid + 1
                else:
                    hi = mid
        return lo


def bucket_pairs(parts: list[tuple[BucketFile, int]], lo: int, hi: int, removed: np.ndarray | None
                 ) -> np.ndarray:
    """(k, 2) int64 global indices of candidate pairs of one band within one hash range.

    `parts` holds one (band of a task's buckets, global index of the task's first document) per
    input task, in task order; `removed` is nonzero for documents exact dedup removed, which are
    no candidates.
    """
    rows_parts, index_parts = [], []
    for band, offset in parts:
        block = band.read(band.first_at_least(lo), band.first_at_least(hi))
        rows_parts.append(block[:, 1:-1])
        index_parts.append(block[:, -1].astype(np.int64) + offset)
    width = parts[0][0].width - 2 if parts else 0
    rows = np.concatenate(rows_parts) if rows_parts else np.empty((0, width), np.uint64)
    index = np.concatenate(index_parts) if index_parts else np.empty(0, np.int64)
    del rows_parts, index_parts
    candidates = np.arange(index.size) if removed is None else np.flatnonzero(removed[index] == 0)
    first, other = band_pairs(rows, candidates)
    return np.stack([index[first], index[other]], axis=1)


def cluster_duplicates(pairs: np.ndarray) -> np.ndarray:
    """Sorted global indices to remove so that each connected component of `pairs` keeps only its
    lowest index. Components are found by hooking roots to smaller roots and pointer jumping."""
    if pairs.size == 0:
        return np.empty(0, np.int64)
    nodes = np.unique(pairs)
    a, b = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
    label = np.arange(nodes.size)
    while True:
        la, lb = label[a], label[b]
        low = np.minimum(la, lb)
        hooked = label.copy()
        np.minimum.at(hooked, la, low)
        np.minimum.at(hooked, lb, low)
        while not np.array_equal(jumped := hooked[hooked], hooked):
            hooked = jumped
        if np.array_equal(hooked, label):
            break
        label = hooked
    # every pointer goes to a smaller index, so a component's root is its lowest member
    return nodes[label != np.arange(nodes.size)]
