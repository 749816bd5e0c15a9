"""Byte-level BPE: training (our own implementation) and the pure-Python reference encoder.

Representation. A chunk (one regex match) is held as a *symbol string*: one character per
token, ``chr(token_id)``. A chunk's UTF-8 bytes decoded as latin-1 give its initial symbols
(ids 0-255 = bytes) at C speed; merge number ``i`` creates id ``256 + i``. Merging the pair
``p`` (a two-character string) in a chunk is then ``chunk.replace(p, chr(new_id))``, which scans
left to right without overlaps, exactly the BPE merge rule, and comparing two pair strings
compares ``(left id, right id)``.

Training (`learn_merges`):
  1. chunk counting, streaming and parallel (`count_chunks`): texts go in batches to worker
     processes, each returns ``{chunk: count}``; memory grows with the number of distinct
     chunks, not with the corpus;
  2. every distinct chunk is kept once with its count; ``pair -> count`` and
     ``pair -> chunk indices`` indexes are built once;
  3. each merge rewrites only the chunks that contain the pair and updates the pair counts of
     those chunks; the most frequent pair comes from a lazy max-heap (a stale entry is an upper
     bound of its count and is re-pushed when popped).

Tie-break (documented, deterministic): among equally frequent pairs the one with the smaller
``(left id, right id)`` wins, the rule of HF tokenizers' BpeTrainer and rustbpe. A pair whose
merged bytes already exist as a token is never merged, so every token has distinct bytes (a
tiktoken rank table needs that); this almost never happens on real text.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from operator import add, itemgetter

from lmforge.errors import LmforgeError
from lmforge.tokenizer.patterns import compile_pattern


def symbols(chunk: str) -> str:
    """A text chunk -> its symbol string (one char per UTF-8 byte, ``chr(byte)``)."""
    try:
        data = chunk.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: replace them, as tiktoken does
        data = chunk.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
    return data.decode("latin-1")


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, e.g. under taskset), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# `findall` lists every chunk of a text at once (~60 bytes a chunk, ~15x the text); above this
# length a text is counted from `finditer` instead, ~1.7x slower but in constant memory.
STREAM_CHARS = 1 << 20


def _count_batch(job: tuple[list[str], str]) -> dict[str, int]:
    texts, pattern = job
    regex = compile_pattern(pattern)
    counter: Counter[str] = Counter()
    for text in texts:
        if len(text) <= STREAM_CHARS:
            counter.update(regex.findall(text))
        else:
            counter.update(map(itemgetter(0), regex.finditer(text)))
    return {symbols(chunk): n for chunk, n in counter.items()}


def _batches(texts: Iterable[str], batch_chars: int, max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = total = 0
    for text in texts:
        if not isinstance(text, str):
            raise LmforgeError(f"training texts must be str, got {type(text).__name__}")
        if max_chars and total + len(text) > max_chars:
            text = text[: max_chars - total]
        if text:
            batch.append(text)
            size += len(text)
            total += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
        if max_chars and total >= max_chars:
            break
    if batch:
        yield batch


def count_chunks(
    texts: Iterable[str],
    pattern: str,
    workers: int = 0,
    batch_chars: int = 1 << 20,
    max_chars: int = 0,
    progress: bool = False,
) -> tuple[dict[str, int], int]:
    """Split every text with `pattern` and count distinct chunks (as symbol strings).

    Returns ``(counts, n_chars)``. Batches never cut a document (a cut could change the split);
    `max_chars` > 0 stops after that many characters, cutting the document it ends in. Memory holds
    the counts (one entry per distinct chunk), the batches in flight and the largest document.
    """
    from tqdm import tqdm

    workers = workers or available_cpus()
    counts: dict[str, int] = defaultdict(int)
    n_chars = 0
    bar = tqdm(unit="char", unit_scale=True, desc="count chunks", disable=not progress, mininterval=0.5)

    def merge(part: dict[str, int], size: int) -> None:
        nonlocal n_chars
        for chunk, n in part.items():
            counts[chunk] += n
        n_chars += size
        bar.update(size)

    jobs = ((batch, pattern) for batch in _batches(texts, batch_chars, max_chars))
    head = list(itertools.islice(jobs, 2))
    jobs = itertools.chain(head, jobs)
    if workers == 1 or len(head) < 2:  # one batch: a process pool would only add start-up time
        for job in jobs:
            merge(_count_batch(job), sum(map(len, job[0])))
    else:
        # At most 2 batches per worker in flight (Pool.imap would read the whole input ahead).
        pending: deque = deque()
        with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
            for job in jobs:
                pending.append((pool.apply_async(_count_batch, (job,)), sum(map(len, job[0]))))
                if len(pending) >= 2 * workers:
                    result, size = pending.popleft()
                    merge(result.get(), size)
            while pending:
                result, size = pending.popleft()
                merge(result.get(), size)
    bar.close()
    return dict(counts), n_chars


def learn_merges(chunk_counts: dict[str, int], n_merges: int, progress: bool = True) -> list[tuple[int, int]]:
    """The BPE merge loop over distinct chunks; returns merges ``(left id, right id)`` in order."""
    from tqdm import tqdm

    words = sorted(w for w in chunk_counts if len(w) > 1)
    freqs = [chunk_counts[w] for w in words]
    pair_counts: dict[str, int] = defaultdict(int)
    where: dict[str, list[int]] = defaultdict(list)  # may hold stale or repeated indices
    for i, word in enumerate(words):
        f = freqs[i]
        for pair in map(add, word, word[1:]):
            pair_counts[pair] += f
            where[pair].append(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([b]) for b in range(256)]
    known = set(vocab)
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_merges, unit="merge", desc="bpe merges", disable=not progress, mininterval=0.5)
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        n = pair_counts.get(pair, 0)
        if n <= 0:
            continue
        if n != -neg:
            heapq.heappush(heap, (-n, pair))
            continue
        left, right = ord(pair[0]), ord(pair[1])
        new_bytes = vocab[left] + vocab[right]
        del pair_counts[pair]
        if new_bytes in known:
            continue
        new = chr(256 + len(merges))
        merges.append((left, right))
        vocab.append(new_bytes)
        known.add(new_bytes)
        fresh: set[str] = set()
        for i in where.pop(pair):
            word = words[i]
            if pair not in word:
                continue
            merged = word.replace(pair, new)
            f = freqs[i]
            for p in map(add, word, word[1:]):
                pair_counts[p] -= f
            for p in map(add, merged, merged[1:]):
                pair_counts[p] += f
                if new in p:
                    where[p].append(i)
                    fresh.add(p)
            words[i] = merged
        pair_counts.pop(pair, None)
        for p in sorted(fresh):
            heapq.heappush(heap, (-pair_counts[p], p))
        bar.update(1)
    bar.close()
    return merges


# ---------------------------------------------------------------------------- reference encoder


def encode_symbols(chunk: str, ranks: dict[str, int]) -> str:
    """BPE-encode one symbol string: repeatedly merge the pair with the lowest merge rank."""
    rank = ranks.get
    inf = len(ranks) + 1
    while len(chunk) > 1:
        best = min(map(add, chunk, chunk[1:]), key=lambda p: rank(p, inf))
        r = rank(best)
        if r is None:
            break
        chunk = chunk.replace(best, chr(256 + r))
    return chunk


def merge_ranks(merges: list[tuple[int, int]]) -> dict[str, int]:
    """Merges -> ``{pair symbol string: merge index}`` for `encode_symbols`."""
    return {chr(a) + chr(b): i for i, (a, b) in enumerate(merges)}


def vocab_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of every non-special token id: 0-255, then one per merge."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by HF's ByteLevel pre-tokenizer and decoder."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
