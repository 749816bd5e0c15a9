"""Data pipeline benchmark: near-duplicate quality, MinHash vs datasketch, throughput vs datatrove.

    .venv/bin/python benchmarks/data.py                # all four parts
    .venv/bin/python benchmarks/data.py --docs 500     # smaller throughput run

1. Planted near-duplicates: pairs (base, variant) whose word-5-gram Jaccard similarity is known
   exactly (computed on the shingle sets), among unrelated documents. A pair counts as found when
   LSH (14 bands x 8 rows) puts both in one cluster. Reports recall for J >= 0.85 and the
   false-positive rate for J < 0.5, plus the detection rate per Jaccard bin next to the
   theoretical 1 - (1 - J^8)^14.
2. MinHash estimates: lmforge's and datasketch's (128 permutations each) on the same shingles.
3. Throughput, one core, the same documents (Shakespeare scenes from the embedded corpus):
   Gopher repetition + Gopher quality + C4 + FineWeb filters + MinHash signatures, every step on
   every document, lmforge vs datatrove 0.10.1 (`pip install -e '.[bench]'`). datatrove gets
   lmforge's word splitter (its English default needs spaCy/NLTK models, which are downloads),
   and C4's sentence counting is off on both sides (it needs NLTK punkt). Both sides' drop
   decisions are compared and printed. Best of 3 timings, interleaved.
4. End to end, wall clock, `--workers` processes: the same documents as 8 JSONL files through the
   same 4 filters and MinHash dedup with all its stages (signatures, buckets, clusters, filter),
   written back as JSONL: `lmforge.data.pipeline.run_pipeline` vs datatrove's
   LocalPipelineExecutor (5 pipelines, as in datatrove's examples), and the same lmforge run with
   `executor: ray` on a local Ray cluster of `--workers` CPUs (started in a loopback-only network
   namespace, `unshare -rn`, since Ray's servers listen on every interface; its start-up is not
   timed). Kept counts, documents/s per core and the ratios are printed side by side.
   Anchors: datatrove (this run) and NeMo Curator, whose README reports its GPU fuzzy dedup 16x
   faster on 3 nodes of H100s than on CPU (a different machine class: quoted, not measured).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

from lmforge.data.config import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig
from lmforge.data.dedup import UnionFind, band_pairs
from lmforge.data.documents import Document
from lmforge.data.filters import C4, FineWeb, GopherQuality, GopherRepetition, split_words
from lmforge.data.minhash import MinHasher, batch_signatures, estimate_jaccard, permutations, shingles

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word(rng: random.Random, n: int = 7) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / len(sa | sb)


def planted_pairs(
    n_pairs: int, n_unrelated: int, seed: int = 0
) -> tuple[list[str], list[tuple[int, int, float]]]:
    """Texts and (base index, variant index, true Jaccard) with Jaccard spread over [0.1, 1]."""
    rng = random.Random(seed)
    vocab = [word(rng) for _ in range(20000)]
    texts: list[str] = []
    pairs = []
    for p in range(n_pairs):
        base = [rng.choice(vocab) for _ in range(rng.randint(200, 600))]
        target = 0.1 + 0.9 * (p + 0.5) / n_pairs
        variant = list(base)
        sb = shingles(" ".join(base), 5)
        positions = list(range(len(base)))
        rng.shuffle(positions)
        j, step = 1.0, max(1, len(base) // 200)
        for i in range(0, len(positions), step):
            for pos in positions[i : i + step]:
                variant[pos] = word(rng, 9)
            j = jaccard(sb, shingles(" ".join(variant), 5))
            if j <= target:
                break
        pairs.append((len(texts), len(texts) + 1, j))
        texts += [" ".join(base), " ".join(variant)]
    for _ in range(n_unrelated):
        texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(200, 600))))
    return texts, pairs


def near_dup_quality(n_pairs: int, n_unrelated: int) -> None:
    texts, pairs = planted_pairs(n_pairs, n_unrelated)
    sigs = MinHasher().signatures(texts)
    uf = UnionFind(len(texts))
    everyone = np.arange(len(texts))
    for b in range(14):
        first, other = band_pairs(sigs[:, b * 8 : (b + 1) * 8], everyone)
        for x, y in zip(first.tolist(), other.tolist()):
            uf.union(x, y)
    roots = uf.roots()
    found = np.array([roots[i] == roots[j] for i, j, _ in pairs])
    js = np.array([j for _, _, j in pairs])
    high, low = js >= 0.85, js < 0.5
    pair_members = {k for i, j, _ in pairs for k in (i, j)}
    stray = sum(1 for k in range(len(texts)) if k not in pair_members and np.sum(roots == roots[k]) > 1)
    print(
        f"## near-duplicate detection (MinHash 5-grams, 14x8 LSH): {len(pairs)} planted pairs, "
        f"{n_unrelated} unrelated documents"
    )
    print(f"recall  J >= 0.85: {found[high].mean():.4f} ({found[high].sum()}/{high.sum()} pairs)")
    print(f"FPR     J <  0.50: {found[low].mean():.4f} ({found[low].sum()}/{low.sum()} pairs)")
    print(f"unrelated documents put in a cluster: {stray}/{n_unrelated}")
    print("| Jaccard bin | pairs | found | theory 1-(1-J^8)^14 |")
    print("|---|---:|---:|---:|")
    for lo in np.arange(0.1, 1.0, 0.1):
        m = (js >= lo) & (js < lo + 0.1 + (1e-9 if lo > 0.85 else 0))
        if m.any():
            theory = np.mean(1 - (1 - js[m] ** 8) ** 14)
            print(f"| {lo:.1f}-{lo + 0.1:.1f} | {m.sum()} | {found[m].mean():.3f} | {theory:.3f} |")


def vs_datasketch(n_pairs: int) -> None:
    import datasketch

    texts, pairs = planted_pairs(n_pairs, 0, seed=1)
    a, b = permutations(128, 1)
    ours, theirs, true = [], [], []
    for i, j, jac in pairs:
        s1, s2 = shingles(texts[i], 5), shingles(texts[j], 5)
        sig = batch_signatures([s1, s2], a, b)
        m1, m2 = datasketch.MinHash(num_perm=128, seed=1), datasketch.MinHash(num_perm=128, seed=1)
        m1.update_batch([x.tobytes() for x in s1])
        m2.update_batch([x.tobytes() for x in s2])
        ours.append(estimate_jaccard(sig[0], sig[1]))
        theirs.append(m1.jaccard(m2))
        true.append(jac)
    ours_a, theirs_a, true_a = map(np.array, (ours, theirs, true))
    print(
        f"\n## MinHash Jaccard estimates vs datasketch {datasketch.__version__} (128 permutations, "
        f"{n_pairs} pairs, J in [0.1, 1])"
    )
    print(
        f"mean |lmforge - true| {np.abs(ours_a - true_a).mean():.4f}; "
        f"mean |datasketch - true| {np.abs(theirs_a - true_a).mean():.4f}; "
        f"mean |lmforge - datasketch| {np.abs(ours_a - theirs_a).mean():.4f}; "
        f"correlation {np.corrcoef(ours_a, theirs_a)[0, 1]:.4f}"
    )


def scene_documents(n: int) -> list[str]:
    from lmforge.data.embedded import Speech, shakespeare_plays

    docs = []
    for play in shakespeare_plays():
        for scene in play.scenes:
            parts = [scene.heading]
            for item in scene.items:
                parts.append(f"{item.speaker}:\n{item.text}" if isinstance(item, Speech) else f"[{item}]")
            docs.append("\n\n".join(parts))
    rng = random.Random(0)
    rng.shuffle(docs)
    return (docs * (n // len(docs) + 1))[:n]


def throughput(n_docs: int) -> None:
    import datatrove
    from datatrove.data import Document as DTDoc
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):
        def __init__(self, fn):
            super().__init__("en")
            self.fn = fn

        def word_tokenize(self, text):
            return self.fn(text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    tok, ws = Words(split_words), Words(str.split)
    texts = scene_documents(n_docs)
    ours_filters = [
        GopherRepetition(GopherRepetitionConfig()),
        GopherQuality(GopherQualityConfig()),
        C4(C4Config(disable=["too_few_sentences"])),
        FineWeb(FineWebConfig()),
    ]
    hasher = MinHasher()
    theirs_filters = [
        GopherRepetitionFilter(language=tok),
        GopherQualityFilter(language=tok),
        C4QualityFilter(min_num_sentences=-1, language=tok),
        FineWebQualityFilter(language=tok),
    ]
    tmp = tempfile.mkdtemp()
    sig_step = MinhashDedupSignature(output_folder=tmp, config=MinhashConfig(), language=ws)
    # datatrove 0.10.1 passes str to xxhash, which xxhash >= 4 refuses; encode as older xxhash did
    import xxhash

    sig_step._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode("utf-8"))

    def run_ours() -> list:
        decisions = []
        for t in texts:
            row = []
            for f in ours_filters:
                row.append(f.check(Document("x", t)))
            decisions.append(row)
        hasher.signatures(texts)
        return decisions

    def run_theirs() -> list:
        decisions = []
        for t in texts:
            row = []
            for f in theirs_filters:
                out = f.filter(DTDoc(text=t, id="x"))
                row.append(None if out is True else out[1])
            decisions.append(row)
            sig_step.get_signature(sig_step.get_shingles(t))
        return decisions

    best_ours = best_theirs = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        d_ours = run_ours()
        best_ours = min(best_ours, time.process_time() - t0)
        t0 = time.process_time()
        d_theirs = run_theirs()
        best_theirs = min(best_theirs, time.process_time() - t0)
    names = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
    print(
        f"\n## throughput, one core: {n_docs} documents (Shakespeare scenes, "
        f"{sum(map(len, texts)) / n_docs:,.0f} chars on average), 4 filters + MinHash signatures"
    )
    for k, name in enumerate(names):
        a = sum(1 for r in d_ours if r[k])
        b = sum(1 for r in d_theirs if r[k])
        print(f"{name}: drops lmforge {a}, datatrove {b}")
    ro, rt = n_docs / best_ours, n_docs / best_theirs
    print(f"lmforge   {ro:,.0f} docs/s/core ({best_ours:.2f} s)")
    print(
        f"datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else '0.10.1'} "
        f"{rt:,.0f} docs/s/core ({best_theirs:.2f} s)"
    )
    print(f"ratio lmforge / datatrove: {ro / rt:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


class _Words:
    """datatrove WordTokenizer over a plain function (built lazily so datatrove stays optional)."""

    @staticmethod
    def make(fn):
        from datatrove.utils.word_tokenizers import WordTokenizer

        class Words(WordTokenizer):
            def word_tokenize(self, text):
                return fn(text)

            def sent_tokenize(self, text):
                return [text]

            def span_tokenize(self, text):
                return [(0, len(text))]

        return Words("en")


def _xxh64(text: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def end_to_end(n_docs: int, files: int, workers: int) -> None:
    """Whole runs on the same JSONL files: read, 4 filters, write, MinHash dedup (all 4 stages)."""
    import json
    from pathlib import Path

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from lmforge.data.config import DataConfig
    from lmforge.data.pipeline import run_pipeline

    root = Path(tempfile.mkdtemp(prefix="lmforge-data-bench-"))
    texts = scene_documents(n_docs)
    (root / "in").mkdir()
    for f in range(files):
        with open(root / "in" / f"part{f:03d}.jsonl", "w") as fh:
            for i in range(f, len(texts), files):
                fh.write(json.dumps({"text": texts[i], "id": f"{f}/{i}"}) + "\n")
    tok, ws = _Words.make(split_words), _Words.make(str.split)

    cfg = DataConfig(
        inputs=[str(root / "in")],
        steps=["gopher_repetition", "gopher_quality", "c4", "fineweb", "minhash_dedup"],
        workers=workers,
    )
    cfg.c4.disable = ["too_few_sentences"]
    t0 = time.perf_counter()
    stats = run_pipeline(cfg, root / "lmforge")
    ours = time.perf_counter() - t0
    on_ray = _ray_seconds(cfg, root / "lmforge-ray", workers)

    mh = MinhashConfig()
    dt = root / "datatrove"

    class Signature(MinhashDedupSignature):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._hash_func = _xxh64  # datatrove 0.10.1 hands str to xxhash >= 4, which refuses it

    def run(pipeline, tasks):
        LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=workers,
            logging_dir=str(dt / f"logs{run.n}"),
            start_method="fork",
        ).run()
        run.n += 1

    run.n = 0
    t0 = time.perf_counter()
    run(
        [
            JsonlReader(str(root / "in")),
            GopherRepetitionFilter(language=tok),
            GopherQualityFilter(language=tok),
            C4QualityFilter(min_num_sentences=-1, language=tok),
            FineWebQualityFilter(language=tok),
            JsonlWriter(str(dt / "filtered")),
        ],
        files,
    )
    run([JsonlReader(str(dt / "filtered")), Signature(str(dt / "sigs"), config=mh, language=ws)], files)
    run([MinhashDedupBuckets(str(dt / "sigs"), str(dt / "buckets"), config=mh)], mh.num_buckets)
    run([MinhashDedupCluster(str(dt / "buckets"), str(dt / "remove"), config=mh)], 1)
    run(
        [
            JsonlReader(str(dt / "filtered")),
            MinhashDedupFilter(str(dt / "remove")),
            JsonlWriter(str(dt / "out")),
        ],
        files,
    )
    theirs = time.perf_counter() - t0
    kept_theirs = sum(1 for p in (dt / "out").glob("*") for _ in __import__("gzip").open(p))
    print(
        f"\n## end to end, {workers} workers: {n_docs} documents in {files} JSONL files -> 4 filters -> "
        f"MinHash dedup (signatures, buckets, clusters, filter) -> jsonl"
    )
    print("| run | wall s | documents/s per core | kept | datatrove time / this time |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("lmforge, local executor", ours, stats["output"]["documents"]),
        ("lmforge, Ray executor", on_ray[0], on_ray[1]) if on_ray else None,
        ("datatrove 0.10.1, LocalPipelineExecutor", theirs, kept_theirs),
    ]
    for name, seconds, kept in filter(None, rows):
        print(
            f"| {name} | {seconds:.1f} | {n_docs / seconds / workers:.0f} | {kept} "
            f"| {theirs / seconds:.2f}x |"
        )
    print(
        "anchor: NeMo Curator's README: GPU fuzzy dedup 16x faster on 3xH100 nodes than on CPU (not run here)"
    )
    shutil.rmtree(root, ignore_errors=True)


def _ray_seconds(cfg, out, workers: int) -> tuple[float, int] | None:
    """(wall seconds, kept documents) of `cfg` on a fresh local Ray cluster in a loopback-only
    network namespace; None (and a note) where unprivileged namespaces are not available."""
    import json
    import secrets
    import shlex
    import subprocess

    from lmforge.config import to_dict

    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"]).returncode:
        print("(Ray run skipped: needs `unshare -rn`)")
        return None
    spec = shlex.quote(json.dumps({"cfg": to_dict(cfg), "out": str(out), "workers": workers}))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = (
        f"ip link set lo up && exec {shlex.quote(sys.executable)} {shlex.quote(__file__)} --ray-child {spec}"
    )
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", cmd], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["kept"]


def _ray_child(spec: str) -> None:
    import json

    import ray

    from lmforge.config import from_dict
    from lmforge.data.config import DataConfig
    from lmforge.data.pipeline import run_pipeline

    args = json.loads(spec)
    cfg = from_dict(DataConfig, args["cfg"], where="data", source="<bench>")
    ray.init(
        num_cpus=args["workers"], _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False
    )
    t0 = time.perf_counter()
    stats = run_pipeline(cfg, args["out"], workers=args["workers"], executor="ray")
    print(json.dumps({"seconds": time.perf_counter() - t0, "kept": stats["output"]["documents"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1000, help="planted pairs (default 1000)")
    p.add_argument("--unrelated", type=int, default=2000, help="unrelated documents (default 2000)")
    p.add_argument("--docs", type=int, default=2000, help="documents for the throughput run (default 2000)")
    p.add_argument("--workers", type=int, default=2, help="workers for the end-to-end run (default 2)")
    p.add_argument(
        "--skip", default="", help="comma list of parts to skip: quality,datasketch,throughput,end2end"
    )
    p.add_argument("--ray-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ray_child:
        _ray_child(args.ray_child)
        return
    skip = set(args.skip.split(","))
    if "quality" not in skip:
        near_dup_quality(args.pairs, args.unrelated)
    if "datasketch" not in skip:
        vs_datasketch(min(args.pairs, 300))
    if "throughput" not in skip:
        throughput(args.docs)
    if "end2end" not in skip:
        end_to_end(args.docs, files=8, workers=args.workers)


if __name__ == "__main__":
    main()
