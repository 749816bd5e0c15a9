"""The data pipeline runner: sharded, resumable, parallel, deterministic.

Work is split into tasks over input units (files, or byte ranges of large JSONL files;
`expand_inputs`, `splits.py`): task t takes units[t::tasks]. Three phases, each a barrier for the next:

1. per task (parallel): read -> per-document steps (`process.py`) -> kept documents,
   statistics, rejects, dedup keys and MinHash band buckets under OUT/_work/tNNNNN/, then a
   completion marker;
2. dedup: exact dedup by content hash and URL over every task's keys (one process, 16 bytes a
   document; `dedup.py`), then MinHash-LSH near dedup as sharded stages (`dedup_stages.py`):
   one task per (band, hash range) finds candidate pairs, one task clusters them -> why each
   document is removed; no process holds every signature;
3. per task (parallel): drop those documents and write OUT/docs/NNNNN.jsonl.zst.

Every output file is written atomically and every finished task leaves a marker, so a run
killed at any point and started again redoes only unfinished tasks and ends with exactly the
bytes of an uninterrupted run; temp files a killed write left behind are removed at the start.
Nothing depends on the number of workers or on timing: the task count comes from the inputs
(or `data.tasks`), documents keep input order, and dedup keeps the first document in that order.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import config_hash, from_dict, to_dict
from lmforge.data.config import DataConfig
from lmforge.data.dedup import DEDUP_REASONS, DedupKeys, dedup_reasons
from lmforge.data.dedup_stages import BucketFile, band_buckets, bucket_pairs, cluster_duplicates, hash_range
from lmforge.data.documents import ShardWriter, read_documents
from lmforge.data.executors import execute
from lmforge.data.process import build_steps, close_steps, process_documents, read_units
from lmforge.data.readers import expand_inputs
from lmforge.data.registry import DEDUP_STEPS
from lmforge.data.rejects import Reject, reject_reason_kind
from lmforge.data.splits import ByteRange, Unit, split_units
from lmforge.data.stats import StatsRecorder, add_dedup_stats, merge_stats, record_dedup_drop, render_summary
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json, remove_stale_temps

# A task's statistics file is written last and doubles as its completion marker.
PHASE1_MARKER = "stats.json"
PHASE3_MARKER = "write.json"


@dataclass
class Plan:
    """Everything a task needs; plain data so that it pickles to worker processes."""

    cfg: dict[str, Any]
    out: str
    units: list[list[Unit]]  # units per task

    @property
    def work(self) -> Path:
        return Path(self.out) / "_work"

    def task_dir(self, task: int) -> Path:
        return self.work / f"t{task:05d}"


def data_config(cfg_dict: dict[str, Any]) -> DataConfig:
    return from_dict(DataConfig, cfg_dict, where="data", source="<pipeline>")


# ---------------------------------------------------------------------------- phase 1: one task


def run_task(plan: Plan, task: int) -> int:
    """Phase 1 of one task. Idempotent: its outputs are replaced atomically, the marker comes last."""
    cfg = data_config(plan.cfg)
    tdir = plan.task_dir(task)
    tdir.mkdir(parents=True, exist_ok=True)
    steps = build_steps(cfg)
    stats = StatsRecorder([s.name for s in steps], cfg.examples_per_rule)
    rejects: list[Reject] = []

    def on_reject(r: Reject) -> None:
        rejects.append(r)
        stats.rejects[reject_reason_kind(r.reason)] += 1

    keys = DedupKeys("exact_dedup" in cfg.steps, cfg.minhash if "minhash_dedup" in cfg.steps else None)
    docs = read_units(plan.units[task], cfg, on_reject)
    with ShardWriter(tdir / "docs.jsonl.zst") as writer, close_steps(steps):
        for doc in process_documents(docs, steps, stats, cfg.max_doc_chars, on_reject):
            writer.write(doc)
            keys.add(doc)
        count = writer.count
    if keys.hasher is not None:
        _save_npy(tdir / "buckets.npy", band_buckets(keys.signatures(), cfg.minhash.bands, cfg.minhash.rows))
    if keys.exact:
        _save_npy(tdir / "keys.npy", keys.keys())
    rej_path = Path(plan.out) / "rejects" / f"{task:05d}.jsonl.zst"
    if rejects:
        with ShardWriter(rej_path) as w:
            for r in rejects:
                w.write(r.to_record())
    elif rej_path.exists():
        rej_path.unlink()
    # last: the completion marker
    atomic_write_json(tdir / PHASE1_MARKER, {"count": count, **stats.to_dict()})
    return task


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, arr)


# ---------------------------------------------------------------------------- phase 2: dedup


def run_exact(plan: Plan) -> None:
    """Exact dedup over every task's content/URL keys. Its removal codes are final without MinHash
    dedup (removed.npy); otherwise the bucket tasks read them (exact.npy) to skip removed documents."""
    cfg = data_config(plan.cfg)
    tasks = range(len(plan.units))
    counts = [read_json(plan.task_dir(t) / PHASE1_MARKER)["count"] for t in tasks]
    keys = None
    if "exact_dedup" in cfg.steps:
        parts = [a for a in (np.load(plan.task_dir(t) / "keys.npy") for t in tasks) if a.size]
        keys = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.uint64)
    reasons = dedup_reasons(int(sum(counts)), keys, cfg.exact_dedup, None, cfg.minhash)
    atomic_write_json(plan.work / "counts.json", counts)
    _save_npy(plan.work / ("exact.npy" if "minhash_dedup" in cfg.steps else "removed.npy"), reasons)  # marker


def pairs_path(plan: Plan, band: int, shard: int) -> Path:
    return plan.work / "pairs" / f"b{band:03d}s{shard:05d}.npy"


def run_bucket(plan: Plan, band: int, shard: int) -> None:
    """One bucket task: the candidate pairs of one band within one hash range, from every task's buckets."""
    cfg = data_config(plan.cfg)
    counts = read_json(plan.work / "counts.json")
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).tolist()
    parts = [(BucketFile(plan.task_dir(t) / "buckets.npy", band), offsets[t]) for t in range(len(counts))]
    removed = np.load(plan.work / "exact.npy")
    pairs = bucket_pairs(parts, *hash_range(shard, cfg.minhash.bucket_shards), removed)
    path = pairs_path(plan, band, shard)
    path.parent.mkdir(exist_ok=True)
    _save_npy(path, pairs)


def run_clusters(plan: Plan) -> None:
    """The cluster task: connected components of every bucket task's pairs -> the final removal codes."""
    cfg = data_config(plan.cfg)
    reasons = np.load(plan.work / "exact.npy")
    shards = cfg.minhash.bucket_shards
    pairs = [np.load(pairs_path(plan, b, s)) for b in range(cfg.minhash.bands) for s in range(shards)]
    reasons[cluster_duplicates(np.concatenate(pairs))] = 3
    _save_npy(plan.work / "removed.npy", reasons)  # last: also the barrier's completion marker


# ---------------------------------------------------------------------------- phase 3: write


def run_write(plan: Plan, task: int) -> int:
    """Phase 3 of one task: drop dedup removals, write OUT/docs/NNNNN.jsonl.zst (if any remain)."""
    cfg = data_config(plan.cfg)
    tdir = plan.task_dir(task)
    out = Path(plan.out) / "docs" / f"{task:05d}.jsonl.zst"
    dedup = any(s in cfg.steps for s in DEDUP_STEPS)
    reasons = np.empty(0, np.int8)
    if dedup:
        counts = read_json(plan.work / "counts.json")
        start = int(sum(counts[:task]))
        reasons = np.load(plan.work / "removed.npy", mmap_mode="r")[start : start + counts[task]]
    dropped: dict[str, Any] = {}
    kept_chars = 0
    with ShardWriter(out) as writer:
        for i, doc in enumerate(read_documents(tdir / "docs.jsonl.zst")):
            if dedup and reasons[i]:
                record_dedup_drop(dropped, *DEDUP_REASONS[int(reasons[i])], doc, cfg.examples_per_rule)
                continue
            writer.write(doc)
            kept_chars += len(doc.text)
        kept = writer.count
    if kept == 0:
        out.unlink()
    atomic_write_json(tdir / PHASE3_MARKER, {"kept": kept, "kept_chars": kept_chars, "dropped": dropped})
    return task


def _phase1(args: tuple[Plan, int]) -> int:
    return run_task(*args)


def _phase3(args: tuple[Plan, int]) -> int:
    return run_write(*args)


def _bucket(args: tuple[Plan, int, int]) -> None:
    run_bucket(*args)


# ---------------------------------------------------------------------------- the run


def make_plan(cfg: DataConfig, out: Path) -> Plan:
    units = split_units(expand_inputs(cfg.inputs), cfg.task_bytes)
    if not units:
        raise LmforgeError("data.inputs: no input files")
    n_tasks = cfg.tasks if cfg.tasks > 0 else len(units)
    n_tasks = min(n_tasks, len(units))
    return Plan(cfg=to_dict(cfg), out=str(out), units=[units[t::n_tasks] for t in range(n_tasks)])


def run_pipeline(cfg: DataConfig, out: str | Path, workers: int | None = None,
                 executor: str | None = None) -> dict:
    """Run the whole pipeline into `out` (docs/, rejects/, stats.json, summary.md); returns the stats."""
    out = Path(out)
    plan = make_plan(cfg, out)
    workers = workers if workers is not None else (cfg.workers or os.cpu_count() or 1)
    executor = executor or cfg.executor
    build_steps(cfg)  # fail fast on a bad step setting, before any worker starts
    remove_stale_temps(out, recursive=True)  # what killed writes left behind
    signature = config_hash({"cfg": plan.cfg, "units": plan.units, "files": _file_stamps(plan)})
    state = plan.work / "plan.json"
    if not (state.exists() and read_json(state).get("hash") == signature):
        for sub in ("_work", "docs", "rejects"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("stats.json", "summary.md"):
            (out / name).unlink(missing_ok=True)
        atomic_write_json(state, {"hash": signature, "tasks": len(plan.units)})
    n = len(plan.units)
    todo = [(plan, t) for t in range(n) if not (plan.task_dir(t) / PHASE1_MARKER).exists()]
    execute(_phase1, todo, workers, executor, "data: filter", cfg.ray)
    if any(s in cfg.steps for s in DEDUP_STEPS) and not (plan.work / "removed.npy").exists():
        run_dedup(plan, workers, executor)
    todo = [(plan, t) for t in range(n) if not (plan.task_dir(t) / PHASE3_MARKER).exists()]
    execute(_phase3, todo, workers, executor, "data: write", cfg.ray)
    remove_stale_temps(out, recursive=True)  # what the workers of retried tasks left behind
    stats = finalize(plan, cfg)
    shutil.rmtree(plan.work, ignore_errors=True)
    return stats


def run_dedup(plan: Plan, workers: int, executor: str) -> None:
    """Phase 2: exact dedup, then the MinHash bucket tasks (on the executor) and the cluster task."""
    cfg = data_config(plan.cfg)
    minhash = "minhash_dedup" in cfg.steps
    if not (plan.work / ("exact.npy" if minhash else "removed.npy")).exists():
        run_exact(plan)
    if minhash:
        todo = [(plan, b, s) for b in range(cfg.minhash.bands) for s in range(cfg.minhash.bucket_shards)
                if not pairs_path(plan, b, s).exists()]
        execute(_bucket, todo, workers, executor, "data: dedup buckets", cfg.ray)
        run_clusters(plan)


def _file_stamps(plan: Plan) -> list[tuple[int, int]]:
    """(size, mtime) of every input file: a resumed run must not mix old and new inputs."""
    stamps = []
    for unit in (u for units in plan.units for u in units):
        path = unit.path if isinstance(unit, ByteRange) else unit
        st = os.stat(path) if os.path.isfile(path) else None
        stamps.append((st.st_size, st.st_mtime_ns) if st else (0, 0))
    return stamps


def finalize(plan: Plan, cfg: DataConfig) -> dict[str, Any]:
    n = len(plan.units)
    parts = [read_json(plan.task_dir(t) / PHASE1_MARKER) for t in range(n)]
    stats = merge_stats(parts, cfg.examples_per_rule)
    writes = [read_json(plan.task_dir(t) / PHASE3_MARKER) for t in range(n)]
    add_dedup_stats(stats, [w["dropped"] for w in writes], cfg.steps, sum(p["count"] for p in parts),
                    cfg.examples_per_rule)
    out = Path(plan.out)
    shards = sorted(p.name for p in (out / "docs").glob("*.jsonl.zst")) if (out / "docs").exists() else []
    stats["output"] = {"documents": sum(w["kept"] for w in writes),
                       "characters": sum(w["kept_chars"] for w in writes), "shards": shards}
    stats["steps_order"] = list(cfg.steps)
    stats["rejected_records"] = sum(stats["rejects"].values())
    atomic_write_json(out / "stats.json", stats)
    atomic_write_text(out / "summary.md", render_summary(stats))
    return stats
