"""MinHash dedup as sharded stages equals the single-process dedup; large JSONL files split into
byte-range tasks give the output of one task."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.config import DataConfig
from lmforge.data.dedup import ExactDedupConfig, UnionFind, dedup_reasons
from lmforge.data.dedup_stages import BucketFile, band_buckets, bucket_pairs, cluster_duplicates, hash_range
from lmforge.data.documents import iter_jsonl, read_documents
from lmforge.data.minhash import MinHashConfig, MinHasher
from lmforge.data.pipeline import run_pipeline
from lmforge.data.preview import preview
from lmforge.data.splits import ByteRange, byte_ranges, split_units

sys.path.insert(0, str(Path(__file__).parent))
from test_data_minhash import mutate, random_doc  # noqa: E402
from test_data_pipeline import STEPS, make_inputs, prose  # noqa: E402


def planted_corpus(seed: int, groups: int = 40) -> list[str]:
    """Clusters of near duplicates (chains of edits, so components are not cliques), exact copies,
    unrelated documents and documents without words, shuffled."""
    rng = random.Random(seed)
    texts = []
    for _ in range(groups):
        words = random_doc(rng, 200)
        texts.append(" ".join(words))
        for _ in range(rng.randint(0, 4)):
            words = mutate(words, rng, rng.choice([1, 2, 3, 60]))
            texts.append(" ".join(words))
    texts += ["", "!!! ...", texts[0], texts[3]]
    rng.shuffle(texts)
    return texts


def sharded_near_duplicates(parts: list[np.ndarray], removed: np.ndarray, cfg: MinHashConfig, root: Path
                            ) -> np.ndarray:
    """The stages as the runner runs them: buckets per task, one pair search per (band, shard), clusters."""
    files = []
    for t, p in enumerate(parts):
        np.save(root / f"{t}.npy", band_buckets(p, cfg.bands, cfg.rows))
        files.append(root / f"{t}.npy")
    offsets = np.concatenate(([0], np.cumsum([p.shape[0] for p in parts])[:-1]))
    pairs = [bucket_pairs([(BucketFile(f, band), int(o)) for f, o in zip(files, offsets)],
                          *hash_range(shard, cfg.bucket_shards), removed)
             for band in range(cfg.bands) for shard in range(cfg.bucket_shards)]
    return cluster_duplicates(np.concatenate(pairs))


@pytest.mark.parametrize("seed,shards,cuts", [(0, 1, [50]), (1, 3, [7, 8, 90]), (2, 16, [])])
def test_sharded_stages_equal_single_process_dedup(seed, shards, cuts, tmp_path):
    texts = planted_corpus(seed)
    cfg = MinHashConfig(bucket_shards=shards)
    sigs = MinHasher(cfg.ngram, cfg.bands, cfg.rows, cfg.seed).signatures(texts)
    keys = np.array([[hash(t) & 0xFFFF_FFFF_FFFF, 0] for t in texts], dtype=np.uint64)
    exact = dedup_reasons(len(texts), keys, ExactDedupConfig(), None, cfg)
    assert (exact == 1).sum() >= 2  # the exact copies: removed before near dedup, as today
    today = dedup_reasons(len(texts), keys, ExactDedupConfig(), [sigs], cfg)
    assert (today == 3).sum() >= 20
    parts = np.split(sigs, [c for c in cuts if c < len(texts)])
    dup = sharded_near_duplicates(parts, exact, cfg, tmp_path)
    assert np.array_equal(dup, np.flatnonzero(today == 3))


def test_clusters_equal_union_find_on_random_graphs():
    rng = np.random.default_rng(0)
    for n, k in [(50, 20), (500, 400), (2000, 3000), (10, 0)]:
        pairs = rng.integers(0, n, size=(k, 2))
        uf = UnionFind(n)
        for a, b in pairs.tolist():
            uf.union(a, b)
        roots = uf.roots()
        expected = [i for i in range(n) if np.flatnonzero(roots == roots[i])[0] != i]
        assert cluster_duplicates(pairs).tolist() == expected
    chain = np.stack([np.arange(1, 5000), np.arange(0, 4999)], axis=1)[::-1]  # a long path, reversed
    assert cluster_duplicates(chain).tolist() == list(range(1, 5000))


def test_a_bucket_task_holds_only_its_hash_range(tmp_path):
    texts = planted_corpus(4)
    sigs = MinHasher().signatures(texts)
    band = band_buckets(sigs, 14, 8)[5]
    lo, hi = hash_range(2, 8)
    inside = (band[:, 0] >= lo) & (band[:, 0] < hi)
    assert band.shape[0] / 16 < inside.sum() < band.shape[0] / 4  # the hash spreads buckets evenly
    assert np.all(band[1:, 0] >= band[:-1, 0])  # sorted: a binary search finds the range
    np.save(tmp_path / "b.npy", band_buckets(sigs, 14, 8))
    f = BucketFile(tmp_path / "b.npy", 5)
    assert np.array_equal(f.read(f.first_at_least(lo), f.first_at_least(hi)), band[inside])
    # every document with words appears once per band, with its index and its band values
    assert sorted(band[:, 9].tolist()) == [i for i, t in enumerate(texts) if t.strip(" !.")]
    assert np.array_equal(band[:, 1:9], sigs[band[:, 9].astype(np.int64), 40:48])


def test_pipeline_output_does_not_depend_on_bucket_shards(tmp_path):
    inputs = make_inputs(tmp_path / "in", files=3, docs_per_file=40)
    outs = []
    for shards in (1, 7):
        cfg = DataConfig(inputs=inputs, steps=STEPS, workers=2, minhash=MinHashConfig(bucket_shards=shards))
        stats = run_pipeline(cfg, tmp_path / f"out{shards}")
        outs.append((stats, [d.to_record() for p in sorted((tmp_path / f"out{shards}" / "docs").iterdir())
                             for d in read_documents(p)]))
    assert outs[0] == outs[1]
    stats = outs[0][0]
    assert stats["steps"]["minhash_dedup"]["dropped"]["near_duplicate"] >= 3
    # the dry run decides with the single-process dedup over the same documents
    dry = preview(DataConfig(inputs=inputs, steps=STEPS), sample=10**6)
    for step in ("exact_dedup", "minhash_dedup"):
        assert dry["steps"][step]["dropped"] == stats["steps"][step]["dropped"]


def write_big_jsonl(path: Path, lines: int, seed: int = 0) -> None:
    """Prose with exact and near duplicates far apart, malformed and empty lines, no final newline."""
    rng = random.Random(seed)
    out, texts = [], []
    for i in range(lines):
        r = rng.random()
        if r < 0.03:
            out.append("{not json")  # a reject, whose line number must survive the split
            continue
        if r < 0.05:
            out.append("")
            continue
        text = prose(rng, rng.randint(12, 30))
        if texts and r < 0.12:
            text = rng.choice(texts)
        elif texts and r < 0.2:
            words = rng.choice(texts).split(" ")
            words[rng.randrange(len(words))] = "changed"
            text = " ".join(words)
        texts.append(text)
        out.append(json.dumps({"text": text, "n": i}))
    path.write_text("\n".join(out))  # the last range ends at the end of file


def test_byte_ranges_cover_every_line_once(tmp_path):
    path = tmp_path / "big.jsonl"
    write_big_jsonl(path, 300)
    data = path.read_bytes()
    ranges = byte_ranges(str(path), 4000)
    assert len(ranges) > 10
    assert ranges[0].start == 0 and ranges[-1].end == len(data)
    for a, b in zip(ranges, ranges[1:]):
        assert a.end == b.start and data[a.end - 1 : a.end] == b"\n"
        assert b.first_line == a.first_line + data[a.start : a.end].count(b"\n")
    assert split_units([str(path)], 0) == [str(path)]
    assert split_units([str(path), "embedded:shakespeare"], 4000) == [*ranges, "embedded:shakespeare"]
    assert isinstance(ranges[0], ByteRange)


def test_one_big_jsonl_as_many_tasks_gives_the_output_of_one_task(tmp_path):
    path = tmp_path / "in" / "big.jsonl"
    path.parent.mkdir()
    write_big_jsonl(path, 600)
    results = {}
    for name, task_bytes in (("one", 0), ("many", 20_000)):
        out = tmp_path / name
        cfg = DataConfig(inputs=[str(path)], steps=STEPS, workers=2, task_bytes=task_bytes)
        stats = run_pipeline(cfg, out)
        docs = [d.to_record() for p in sorted((out / "docs").iterdir()) for d in read_documents(p)]
        rejects = [r for p in sorted((out / "rejects").iterdir()) for _, r in iter_jsonl(p)]
        shards = stats["output"].pop("shards")
        results[name] = (stats, docs, rejects, len(shards))
    one, many = results["one"], results["many"]
    assert one[3] == 1 and many[3] > 10  # one task, then many
    assert many[:3] == one[:3]  # same documents, ids, statistics and rejects (with their line numbers)
    assert len(one[2]) > 5 and len(one[1]) > 300
    assert one[0]["steps"]["exact_dedup"]["out_docs"] < one[0]["steps"]["exact_dedup"]["in_docs"]
    assert one[0]["steps"]["minhash_dedup"]["dropped"]["near_duplicate"] > 10
