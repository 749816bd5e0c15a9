"""MinHash signatures against datatrove's and datasketch's; LSH clustering; planted near-duplicates."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmforge.data.dedup import UnionFind, content_key, first_occurrence_duplicates, near_duplicates
from lmforge.data.minhash import (
    MinHasher,
    batch_signatures,
    estimate_jaccard,
    permutations,
    shingles,
    simplify_text,
)

_letters = random.Random(42)
WORDS = ["".join(_letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(3000)]


def random_doc(rng: random.Random, n: int = 300) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def mutate(words: list[str], rng: random.Random, k: int) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), k):
        out[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(9))
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / len(sa | sb)


def test_signatures_equal_datatrove(tmp_path):
    pytest.importorskip("datatrove")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Split(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    dt = MinhashDedupSignature(output_folder=str(tmp_path), config=MinhashConfig(), language=Split("en"))
    hasher = MinHasher()
    a, b = permutations(112, 1)
    assert np.array_equal(a, dt.parameters[0][0]) and np.array_equal(b, dt.parameters[1][0])
    rng = random.Random(0)
    texts = [" ".join(random_doc(rng, rng.randint(6, 400))) for _ in range(20)]
    sets = [shingles(t, 5) for t in texts]
    ours = hasher.signatures(texts)
    for sh, sig in zip(sets, ours):
        theirs = np.concatenate([np.array(x, dtype=np.uint64) for x in dt.get_signature(sh.reshape(-1, 1))])
        assert np.array_equal(sig, theirs)


def test_batch_equals_single_and_handles_huge_and_empty():
    rng = random.Random(1)
    a, b = permutations(16, 3)
    sets = [np.unique(np.array([rng.getrandbits(64) for _ in range(n)], dtype=np.uint64))
            for n in (0, 5, 40000, 1, 300)]
    batch = batch_signatures(sets, a, b)
    from lmforge.data.minhash import signature_from_shingles

    for sh, row in zip(sets, batch):
        assert np.array_equal(row, signature_from_shingles(sh, a, b))
    assert np.all(batch[0] == np.iinfo(np.uint64).max)


def test_estimates_agree_with_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(2)
    a, b = permutations(128, 1)
    ours_err, theirs_err, diffs = [], [], []
    for k in range(0, 120, 4):
        base = random_doc(rng)
        s1, s2 = shingles(" ".join(base), 5), shingles(" ".join(mutate(base, rng, k)), 5)
        true = jaccard(s1, s2)
        sig = batch_signatures([s1, s2], a, b)
        ours = estimate_jaccard(sig[0], sig[1])
        m1, m2 = datasketch.MinHash(num_perm=128, seed=1), datasketch.MinHash(num_perm=128, seed=1)
        m1.update_batch([x.tobytes() for x in s1])
        m2.update_batch([x.tobytes() for x in s2])
        theirs = m1.jaccard(m2)
        ours_err.append(abs(ours - true))
        theirs_err.append(abs(theirs - true))
        diffs.append(abs(ours - theirs))
    # both are unbiased estimators with standard error sqrt(J(1-J)/128) <= 0.045
    assert np.mean(ours_err) < 0.04 and np.mean(theirs_err) < 0.04
    assert max(diffs) < 0.2 and np.mean(diffs) < 0.06


def test_planted_near_duplicates():
    rng = random.Random(3)
    hasher = MinHasher()
    texts, pairs = [], []
    for k in (0, 2, 4, 60, 80, 100):  # 5-gram Jaccard ~1, >0.9, ~0.87 | ~0.3, ~0.2, ~0.15
        for _ in range(15):
            base = random_doc(rng)
            pairs.append((len(texts), len(texts) + 1, k))
            texts += [" ".join(base), " ".join(mutate(base, rng, k))]
    sigs = hasher.signatures(texts)
    removed = set(near_duplicates(sigs, 14, 8, np.ones(len(texts), bool)).tolist())
    parts = [sigs[:37], sigs[37:100], sigs[100:]]  # per-task files give the same answer
    assert set(near_duplicates(parts, 14, 8, np.ones(len(texts), bool)).tolist()) == removed
    sets = [shingles(t, 5) for t in texts]
    high = [(i, j) for i, j, _ in pairs if jaccard(sets[i], sets[j]) >= 0.85]
    low = [(i, j) for i, j, _ in pairs if jaccard(sets[i], sets[j]) < 0.5]
    assert len(high) >= 40 and len(low) >= 40
    assert sum(j in removed for i, j in high) / len(high) >= 0.95
    assert all(i not in removed for i, j in high)  # the first of each cluster is kept
    assert sum(j in removed for i, j in low) / len(low) <= 0.01


def test_exact_helpers():
    keys = np.array([5, 3, 5, 0, 3, 0], dtype=np.uint64)
    assert first_occurrence_duplicates(keys).tolist() == [2, 4, 5]
    assert first_occurrence_duplicates(keys, skip_zero=True).tolist() == [2, 4]
    alive = np.array([False, True, True, True, True, True])
    assert first_occurrence_duplicates(keys, alive).tolist() == [4, 5]
    assert content_key("Hello   World\n") == content_key("hello world")
    uf = UnionFind(6)
    uf.union(0, 3)
    uf.union(3, 5)
    assert uf.roots()[[0, 3, 5]].tolist() == [uf.find(0)] * 3 and uf.find(1) != uf.find(0)


def test_simplify_text():
    assert simplify_text("Hello, World! On Monday 3.5 Éclairs") == "hello  world  on WEEKDAY 0 eclairs"
