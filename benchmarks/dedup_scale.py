"""MinHash dedup at scale: the sharded stages vs the single-process dedup, peak memory per task.

    .venv/bin/python benchmarks/dedup_scale.py                    # 100k and 1M documents
    .venv/bin/python benchmarks/dedup_scale.py --docs 100000 --shards 1,4

The signatures are synthetic (random values below 2^61 - 1, as MinHash values are): computing
1M real signatures from text takes longer than the dedup itself on a small machine, and the
dedup stages only ever see signatures. 10% of the documents are near copies of one of 10,000
base documents (8 of the 14 bands redrawn, so they still share 6 bands with their base), spread
over 16 input tasks, so clusters cross task boundaries.

Every measurement runs in a fresh process and reports that process's peak resident memory
(VmHWM; ru_maxrss would carry over the benchmark's own peak through fork and exec), so the
figures are what one task of the runner needs:

- today: `dedup.dedup_reasons` over every task's memory-mapped signatures, one process;
- bucket task: one (band, hash range) task of `dedup_stages.bucket_pairs`, for each shard count;
- all stages: bucket files of every task, every bucket task, the cluster task, one after another
  in one process (the time is what the stages cost on one core; a cluster runs them in parallel);
- baseline: the interpreter with numpy and lmforge.data imported, doing nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS, ROWS, TASKS = 14, 8, 16


def synthesize(root: Path, n_docs: int, seed: int = 0) -> None:
    """Per task: signatures.npy (what today's dedup reads) and buckets.npy (what the stages read)."""
    from lmforge.data.dedup_stages import band_buckets
    from lmforge.data.minhash import MERSENNE

    rng = np.random.default_rng(seed)
    width = BANDS * ROWS
    n_bases = n_docs // 100
    bases = rng.integers(0, MERSENNE, size=(n_bases, width), dtype=np.uint64)
    counts = []
    for t in range(TASKS):
        n = n_docs // TASKS + (t < n_docs % TASKS)
        sigs = rng.integers(0, MERSENNE, size=(n, width), dtype=np.uint64)
        dup = np.flatnonzero(rng.random(n) < 0.1)
        if t == 0:
            sigs[:n_bases] = bases  # the bases come first, so they are the kept ones
            dup = dup[dup >= n_bases]
        sigs[dup] = bases[rng.integers(0, n_bases, dup.size)]
        for i in dup:
            redraw = rng.choice(BANDS, 8, replace=False)
            for b in redraw:
                sigs[i, b * ROWS : (b + 1) * ROWS] = rng.integers(0, MERSENNE, ROWS, dtype=np.uint64)
        d = root / f"t{t:05d}"
        d.mkdir(parents=True)
        np.save(d / "signatures.npy", sigs)
        np.save(d / "buckets.npy", band_buckets(sigs, BANDS, ROWS))
        counts.append(n)
    (root / "counts.json").write_text(json.dumps(counts))
    np.save(root / "exact.npy", np.zeros(sum(counts), np.int8))


def child(mode: str, root: Path, shards: int) -> dict:
    from lmforge.data.dedup import ExactDedupConfig, dedup_reasons
    from lmforge.data.dedup_stages import (
        BucketFile,
        band_buckets,
        bucket_pairs,
        cluster_duplicates,
        hash_range,
    )
    from lmforge.data.minhash import MinHashConfig

    counts = json.loads((root / "counts.json").read_text())
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).tolist()
    removed = np.load(root / "exact.npy")
    t0 = time.perf_counter()
    result: dict = {}
    if mode == "today":
        sigs = [np.load(root / f"t{t:05d}" / "signatures.npy", mmap_mode="r") for t in range(TASKS)]
        reasons = dedup_reasons(sum(counts), None, ExactDedupConfig(), sigs, MinHashConfig())
        result["removed"] = int((reasons == 3).sum())
    elif mode == "bucket":
        parts = [(BucketFile(root / f"t{t:05d}" / "buckets.npy", 0), offsets[t]) for t in range(TASKS)]
        result["pairs"] = int(bucket_pairs(parts, *hash_range(0, shards), removed).shape[0])
    elif mode == "all":
        for t in range(TASKS):  # stage 1's extra work: the bucket files (signatures exist either way)
            band_buckets(np.load(root / f"t{t:05d}" / "signatures.npy"), BANDS, ROWS)
        pairs = []
        for b in range(BANDS):
            for s in range(shards):
                parts = [
                    (BucketFile(root / f"t{t:05d}" / "buckets.npy", b), offsets[t]) for t in range(TASKS)
                ]
                pairs.append(bucket_pairs(parts, *hash_range(s, shards), removed))
        result["removed"] = int(cluster_duplicates(np.concatenate(pairs)).size)
    result["seconds"] = time.perf_counter() - t0
    return {**result, "peak_mb": peak_mb()}


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM of /proc/self/status), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(mode: str, root: Path, shards: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(root), str(shards)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", default="100000,1000000", help="document counts (default 100000,1000000)")
    p.add_argument("--shards", default="1,2,4,8,16,32", help="bucket shard counts (default 1,2,4,8,16,32)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import lmforge.data.pipeline  # noqa: F401  (a task imports the runner: count it in the baseline)

        mode, root, shards = args.child
        print(
            json.dumps({"peak_mb": peak_mb()} if mode == "baseline" else child(mode, Path(root), int(shards)))
        )
        return
    shard_counts = [int(s) for s in args.shards.split(",")]
    base = measure("baseline", Path("."))
    print(f"baseline process (python + numpy + lmforge.data): {base['peak_mb']:.0f} MB")
    for n in (int(x) for x in args.docs.split(",")):
        root = Path(tempfile.mkdtemp(prefix="lmforge-dedup-scale-"))
        try:
            synthesize(root, n)
            today = measure("today", root)
            print(f"\n## {n:,} documents, {TASKS} input tasks, {BANDS}x{ROWS} LSH")
            print(
                f"today's dedup (one process):   {today['seconds']:6.1f} s, peak {today['peak_mb']:6.0f} MB, "
                f"removed {today['removed']:,}"
            )
            print(
                "| bucket shards | bucket tasks | one bucket task: peak MB | s "
                "| all stages, one core: s | removed |"
            )
            print("|---:|---:|---:|---:|---:|---:|")
            for s in shard_counts:
                one, every = measure("bucket", root, s), measure("all", root, s)
                assert every["removed"] == today["removed"], (every, today)
                print(
                    f"| {s} | {BANDS * s} | {one['peak_mb']:.0f} | {one['seconds']:.2f} "
                    f"| {every['seconds']:.1f} | {every['removed']:,} |"
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
