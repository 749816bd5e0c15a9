"""The data pipeline runner: sharded, resumable, parallel, deterministic.

Work is split into tasks over input units (files; `expand_inputs`): task t takes
sorted(units)[t::tasks]. Three phases, each a barrier for the next:

1. per task (parallel): read -> per-document steps -> kept documents, statistics, rejects,
   dedup keys and MinHash signatures under OUT/_work/tNNNNN/, then a completion marker;
2. dedup (one process, vectorised): exact dedup by content hash and URL, MinHash-LSH
   clusters (`dedup.py`) -> the global indices to remove;
3. per task (parallel): drop those documents and write OUT/docs/NNNNN.jsonl.zst.

Every output file is written atomically and every finished task leaves a marker, so a run
killed at any point and started again redoes only unfinished tasks and ends with exactly the
bytes of an uninterrupted run. Nothing depends on the number of workers or on timing:
the task count comes from the inputs (or `data.tasks`), documents keep input order, and
dedup keeps the first document in that order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import config_hash, to_dict
from lmforge.data.config import DEDUP_STEPS, DataConfig
from lmforge.data.documents import Document, ShardWriter, read_documents
from lmforge.data.readers import HTML_FLAG, Reject, expand_inputs, read_unit
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json

EXCERPT_CHARS = 240
# A task's statistics file is written last and doubles as its completion marker.
PHASE1_MARKER = "stats.json"
PHASE3_MARKER = "write.json"


# ---------------------------------------------------------------------------- steps


def build_steps(cfg: DataConfig) -> list[Any]:
    """The per-document steps of the recipe, in order (dedup steps are handled as barriers)."""
    from lmforge.data import classifiers, extract, filters, langid, normalize, pii

    factories: dict[str, Callable[[], Any]] = {
        "extract": lambda: extract.ExtractStep(cfg.extract.timeout, cfg.extract.favor_precision, cfg.extract.isolation),
        "normalize": lambda: normalize.NormalizeStep(cfg.normalize),
        "language": lambda: langid.LanguageStep(cfg.language),
        "gopher_quality": lambda: filters.GopherQuality(cfg.gopher_quality),
        "gopher_repetition": lambda: filters.GopherRepetition(cfg.gopher_repetition),
        "c4": lambda: filters.C4(cfg.c4),
        "fineweb": lambda: filters.FineWeb(cfg.fineweb),
        "wordlist": lambda: classifiers.WordListStep(cfg.wordlist),
        "classifier": lambda: classifiers.ClassifierStep(cfg.classifier),
        "pii": lambda: pii.PIIStep(cfg.pii),
    }
    return [factories[s]() for s in cfg.steps if s not in DEDUP_STEPS]


@contextlib.contextmanager
def close_steps(steps: list[Any]) -> Iterator[None]:
    """Release what steps hold (the extraction sandbox process) when the task ends, however it ends."""
    try:
        yield
    finally:
        for step in steps:
            close = getattr(step, "close", None)
            if close is not None:
                close()


# ---------------------------------------------------------------------------- statistics


def new_step_stats() -> dict[str, Any]:
    return {"in_docs": 0, "in_chars": 0, "out_docs": 0, "out_chars": 0, "modified": 0,
            "dropped": {}, "dropped_chars": {}, "counters": {}, "examples": {}}


class StatsRecorder:
    """Counts per step and per rule, plus the first few examples of each rule's drops."""

    def __init__(self, step_names: list[str], examples: int):
        self.examples = examples
        self.input = {"documents": 0, "characters": 0}
        self.rejects: Counter = Counter()
        self.steps = {name: new_step_stats() for name in step_names}

    def dropped(self, step: str, reason: str, doc: Document, chars: int) -> None:
        s = self.steps[step]
        s["dropped"][reason] = s["dropped"].get(reason, 0) + 1
        s["dropped_chars"][reason] = s["dropped_chars"].get(reason, 0) + chars
        ex = s["examples"].setdefault(reason, [])
        if len(ex) < self.examples:
            ex.append({"id": doc.id, "source": doc.source, "excerpt": doc.text[:EXCERPT_CHARS]})

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "rejects": dict(self.rejects), "steps": self.steps}


def merge_stats(parts: Iterable[dict[str, Any]], examples: int) -> dict[str, Any]:
    """Sum task statistics in task order; examples are the first ones in that order."""
    out: dict[str, Any] = {"input": {"documents": 0, "characters": 0}, "rejects": {}, "steps": {}}
    for part in parts:
        for k, v in part["input"].items():
            out["input"][k] = out["input"].get(k, 0) + v
        for k, v in part["rejects"].items():
            out["rejects"][k] = out["rejects"].get(k, 0) + v
        for name, s in part["steps"].items():
            t = out["steps"].setdefault(name, new_step_stats())
            for key in ("in_docs", "in_chars", "out_docs", "out_chars", "modified"):
                t[key] += s[key]
            for key in ("dropped", "dropped_chars", "counters"):
                for r, n in s[key].items():
                    t[key][r] = t[key].get(r, 0) + n
            for r, ex in s["examples"].items():
                have = t["examples"].setdefault(r, [])
                have.extend(ex[: max(0, examples - len(have))])
    return out


def reject_reason_kind(reason: str) -> str:
    """A short key for counting reader rejects: 'malformed JSON (...)' -> 'malformed_json'."""
    head = reason.split("(")[0].split(":")[0].strip().lower()
    return "_".join(head.split()) or "unknown"


# ---------------------------------------------------------------------------- phase 1: one task


@dataclass
class Plan:
    """Everything a task needs; plain data so that it pickles to worker processes."""

    cfg: dict[str, Any]
    out: str
    units: list[list[str]]  # units per task

    @property
    def work(self) -> Path:
        return Path(self.out) / "_work"

    def task_dir(self, task: int) -> Path:
        return self.work / f"t{task:05d}"


def max_record_bytes(cfg: DataConfig) -> int:
    """Records over this many bytes cannot hold a document within max_doc_chars: skip them unread."""
    return 4 * cfg.max_doc_chars + (1 << 20)


def data_config(cfg_dict: dict[str, Any]) -> DataConfig:
    from lmforge.config import from_dict

    return from_dict(DataConfig, cfg_dict, where="data", source="<pipeline>")


def process_documents(
    docs: Iterable[Document],
    steps: list[Any],
    stats: StatsRecorder,
    max_doc_chars: int,
    on_reject: Callable[[Reject], None],
) -> Iterable[Document]:
    """Run the per-document steps; yields kept documents and records everything in `stats`."""
    extracts = any(step.name == "extract" for step in steps)
    for doc in docs:
        n = len(doc.text)
        stats.input["documents"] += 1
        stats.input["characters"] += n
        if n > max_doc_chars:
            on_reject(Reject(doc.source, doc.id, f"too_long: {n} characters > data.max_doc_chars {max_doc_chars}",
                             doc.text[:EXCERPT_CHARS]))
            continue
        if not extracts and doc.metadata.get(HTML_FLAG):
            on_reject(Reject(doc.source, doc.id, "html_without_extract: add `extract` to data.steps for HTML/WARC input"))
            continue
        for step in steps:
            s = stats.steps[step.name]
            s["in_docs"] += 1
            s["in_chars"] += len(doc.text)
            before = doc.text
            out = step(doc)
            if isinstance(out, str):
                stats.dropped(step.name, out, doc, len(before))
                break
            doc = out
            s["out_docs"] += 1
            s["out_chars"] += len(doc.text)
            if doc.text is not before and doc.text != before:
                s["modified"] += 1
        else:
            yield doc
    for step in steps:
        for k, v in getattr(step, "counters", {}).items():
            c = stats.steps[step.name]["counters"]
            c[k] = c.get(k, 0) + v


def run_task(plan: Plan, task: int) -> int:
    """Phase 1 of one task. Idempotent: its outputs are replaced atomically, the marker comes last."""
    from lmforge.data.dedup import content_key, url_key
    from lmforge.data.minhash import MinHasher

    cfg = data_config(plan.cfg)
    tdir = plan.task_dir(task)
    tdir.mkdir(parents=True, exist_ok=True)
    steps = build_steps(cfg)
    stats = StatsRecorder([s.name for s in steps], cfg.examples_per_rule)
    rejects: list[Reject] = []

    def on_reject(r: Reject) -> None:
        rejects.append(r)
        stats.rejects[reject_reason_kind(r.reason)] += 1

    def read_all() -> Iterable[Document]:
        for unit in plan.units[task]:
            yield from read_unit(unit, text_field=cfg.text_field, on_reject=on_reject, extract=False,
                                 max_bytes=max_record_bytes(cfg))

    want_minhash = "minhash_dedup" in cfg.steps
    want_exact = "exact_dedup" in cfg.steps
    hasher = MinHasher(cfg.minhash.ngram, cfg.minhash.bands, cfg.minhash.rows, cfg.minhash.seed) if want_minhash else None
    keys: list[tuple[int, int]] = []
    sigs: list[np.ndarray] = []
    pending: list[str] = []
    with ShardWriter(tdir / "docs.jsonl.zst") as writer, close_steps(steps):
        for doc in process_documents(read_all(), steps, stats, cfg.max_doc_chars, on_reject):
            writer.write(doc)
            if want_exact:
                keys.append((content_key(doc.text), url_key(doc.metadata.get("url"))))
            if hasher is not None:
                pending.append(doc.text)
                if len(pending) >= 256:
                    sigs.append(hasher.signatures(pending))
                    pending.clear()
        count = writer.count
    if hasher is not None:
        if pending:
            sigs.append(hasher.signatures(pending))
        sig = np.concatenate(sigs) if sigs else np.empty((0, cfg.minhash.bands * cfg.minhash.rows), np.uint64)
        _save_npy(tdir / "signatures.npy", sig)
    if want_exact:
        _save_npy(tdir / "keys.npy", np.array(keys, dtype=np.uint64).reshape(-1, 2))
    rej_path = Path(plan.out) / "rejects" / f"{task:05d}.jsonl.zst"
    if rejects:
        with ShardWriter(rej_path) as w:
            for r in rejects:
                w.write(r.to_record())
    elif rej_path.exists():
        rej_path.unlink()
    atomic_write_json(tdir / PHASE1_MARKER, {"count": count, **stats.to_dict()})  # last: the completion marker
    return task


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, arr)


# ---------------------------------------------------------------------------- phase 2: dedup


def run_dedup(plan: Plan) -> dict[str, Any]:
    """Global exact and near dedup over every task's keys and signatures; writes the removal list."""
    from lmforge.data.dedup import first_occurrence_duplicates, near_duplicates

    cfg = data_config(plan.cfg)
    counts = [read_json(plan.task_dir(t) / "stats.json")["count"] for t in range(len(plan.units))]
    total = int(sum(counts))
    alive = np.ones(total, dtype=bool)
    reasons = np.zeros(total, dtype=np.int8)  # 1 content, 2 url, 3 near duplicate
    summary: dict[str, Any] = {}
    if "exact_dedup" in cfg.steps:
        keys = _concat([np.load(plan.task_dir(t) / "keys.npy") for t in range(len(counts))], (0, 2))
        if cfg.exact_dedup.content and total:
            dup = first_occurrence_duplicates(keys[:, 0], alive)
            alive[dup], reasons[dup] = False, 1
        if cfg.exact_dedup.url and total:
            dup = first_occurrence_duplicates(keys[:, 1], alive, skip_zero=True)
            alive[dup], reasons[dup] = False, 2
    if "minhash_dedup" in cfg.steps:
        mh = cfg.minhash
        parts = [np.load(plan.task_dir(t) / "signatures.npy", mmap_mode="r") for t in range(len(counts))]
        parts = [p for p in parts if p.shape[0]]
        # a document without words has an all-max signature: never anyone's near duplicate
        has_words = np.concatenate([np.asarray(p[:, 0]) != np.iinfo(np.uint64).max for p in parts] or [np.zeros(0, bool)])
        dup = near_duplicates(parts, mh.bands, mh.rows, alive & has_words) if parts else np.empty(0, np.int64)
        alive[dup], reasons[dup] = False, 3
    atomic_write_json(plan.work / "counts.json", counts)
    _save_npy(plan.work / "removed.npy", reasons)  # last: also the barrier's completion marker
    summary["removed"] = int((~alive).sum())
    return summary


def _concat(arrays: list[np.ndarray], empty_shape: tuple[int, int]) -> np.ndarray:
    arrays = [a for a in arrays if a.size]
    return np.concatenate(arrays) if arrays else np.empty(empty_shape, dtype=np.uint64)


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
                key = _DEDUP_REASONS[int(reasons[i])]
                d = dropped.setdefault(key, {"docs": 0, "chars": 0, "examples": []})
                d["docs"] += 1
                d["chars"] += len(doc.text)
                if len(d["examples"]) < cfg.examples_per_rule:
                    d["examples"].append({"id": doc.id, "source": doc.source, "excerpt": doc.text[:EXCERPT_CHARS]})
                continue
            writer.write(doc)
            kept_chars += len(doc.text)
        kept = writer.count
    if kept == 0:
        out.unlink()
    atomic_write_json(tdir / PHASE3_MARKER, {"kept": kept, "kept_chars": kept_chars, "dropped": dropped})
    return task


_DEDUP_REASONS = {1: "exact_dedup:duplicate_content", 2: "exact_dedup:duplicate_url", 3: "minhash_dedup:near_duplicate"}


# ---------------------------------------------------------------------------- executors


def _phase1(args: tuple[Plan, int]) -> int:
    return run_task(*args)


def _phase3(args: tuple[Plan, int]) -> int:
    return run_write(*args)


def execute(fn: Callable[[tuple[Plan, int]], int], plan: Plan, tasks: list[int], workers: int, executor: str,
            desc: str) -> None:
    """Run `fn` over tasks: in this process, a local process pool, or Ray."""
    from tqdm import tqdm

    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=None)
    try:
        if executor == "ray":
            _execute_ray(fn, plan, tasks, bar)
        elif workers <= 1 or len(tasks) == 1:
            for t in tasks:
                fn((plan, t))
                bar.update()
        else:
            _execute_pool(fn, plan, tasks, workers, bar)
    finally:
        bar.close()


def _execute_pool(fn: Callable, plan: Plan, tasks: list[int], workers: int, bar: Any) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, (plan, t)) for t in tasks]
        try:
            for f in as_completed(futures):
                f.result()
                bar.update()
        except BrokenProcessPool:
            raise LmforgeError(
                "a data worker process died (killed or out of memory); run the same command again to resume: "
                "finished tasks are kept"
            ) from None


def _execute_ray(fn: Callable, plan: Plan, tasks: list[int], bar: Any) -> None:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        raise LmforgeError("--executor ray needs the `ray` package (pip install 'lmforge[cluster]')") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(fn)
    refs = [remote.remote((plan, t)) for t in tasks]
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
        bar.update(len(done))


# ---------------------------------------------------------------------------- the run


def make_plan(cfg: DataConfig, out: Path) -> Plan:
    units = expand_inputs(cfg.inputs)
    if not units:
        raise LmforgeError("data.inputs: no input files")
    n_tasks = cfg.tasks if cfg.tasks > 0 else len(units)
    n_tasks = min(n_tasks, len(units))
    return Plan(cfg=to_dict(cfg), out=str(out), units=[units[t::n_tasks] for t in range(n_tasks)])


def run_pipeline(cfg: DataConfig, out: str | Path, workers: int | None = None, executor: str | None = None) -> dict:
    """Run the whole pipeline into `out` (docs/, rejects/, stats.json, summary.md); returns the stats."""
    out = Path(out)
    plan = make_plan(cfg, out)
    workers = workers if workers is not None else (cfg.workers or os.cpu_count() or 1)
    executor = executor or cfg.executor
    build_steps(cfg)  # fail fast on a bad step setting, before any worker starts
    signature = config_hash({"cfg": plan.cfg, "units": plan.units, "files": _file_stamps(plan)})
    state = plan.work / "plan.json"
    if not (state.exists() and read_json(state).get("hash") == signature):
        for sub in ("_work", "docs", "rejects"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("stats.json", "summary.md"):
            (out / name).unlink(missing_ok=True)
        atomic_write_json(state, {"hash": signature, "tasks": len(plan.units)})
    n = len(plan.units)
    todo = [t for t in range(n) if not (plan.task_dir(t) / PHASE1_MARKER).exists()]
    execute(_phase1, plan, todo, workers, executor, "data: filter")
    if any(s in cfg.steps for s in DEDUP_STEPS) and not (plan.work / "removed.npy").exists():
        run_dedup(plan)
    todo = [t for t in range(n) if not (plan.task_dir(t) / PHASE3_MARKER).exists()]
    execute(_phase3, plan, todo, workers, executor, "data: write")
    stats = finalize(plan, cfg)
    shutil.rmtree(plan.work, ignore_errors=True)
    return stats


def _file_stamps(plan: Plan) -> list[tuple[int, int]]:
    """(size, mtime) of every input file: a resumed run must not mix old and new inputs."""
    stamps = []
    for unit in (u for units in plan.units for u in units):
        st = os.stat(unit) if os.path.isfile(unit) else None
        stamps.append((st.st_size, st.st_mtime_ns) if st else (0, 0))
    return stamps


def finalize(plan: Plan, cfg: DataConfig) -> dict[str, Any]:
    n = len(plan.units)
    parts = [read_json(plan.task_dir(t) / "stats.json") for t in range(n)]
    stats = merge_stats(parts, cfg.examples_per_rule)
    writes = [read_json(plan.task_dir(t) / "write.json") for t in range(n)]
    kept_docs = sum(w["kept"] for w in writes)
    before = sum(p["count"] for p in parts)
    for name in [s for s in cfg.steps if s in DEDUP_STEPS]:
        s = stats["steps"].setdefault(name, new_step_stats())
        s["in_docs"] = before
        for w in writes:
            for key, d in w["dropped"].items():
                step, reason = key.split(":")
                if step != name:
                    continue
                s["dropped"][reason] = s["dropped"].get(reason, 0) + d["docs"]
                s["dropped_chars"][reason] = s["dropped_chars"].get(reason, 0) + d["chars"]
                have = s["examples"].setdefault(reason, [])
                have.extend(d["examples"][: max(0, cfg.examples_per_rule - len(have))])
        s["out_docs"] = s["in_docs"] - sum(s["dropped"].values())
        before = s["out_docs"]
    out = Path(plan.out)
    shards = sorted(p.name for p in (out / "docs").glob("*.jsonl.zst")) if (out / "docs").exists() else []
    chars = sum(w["kept_chars"] for w in writes)
    _fill_dedup_chars(stats, cfg)
    stats["output"] = {"documents": kept_docs, "characters": chars, "shards": shards}
    stats["steps_order"] = list(cfg.steps)
    stats["rejected_records"] = sum(stats["rejects"].values())
    atomic_write_json(out / "stats.json", stats)
    atomic_write_text(out / "summary.md", render_summary(stats))
    return stats


def _fill_dedup_chars(stats: dict[str, Any], cfg: DataConfig) -> None:
    """in/out characters of the dedup steps follow from the per-document steps' output."""
    chars = stats["input"]["characters"]
    for name in cfg.steps:
        s = stats["steps"][name]
        if name in DEDUP_STEPS:
            s["in_chars"] = chars
            s["out_chars"] = chars - sum(s["dropped_chars"].values())
        chars = s["out_chars"]


def render_summary(stats: dict[str, Any]) -> str:
    """A readable Markdown summary: in/out per step, drops per rule, and examples."""
    inp, out = stats["input"], stats.get("output", {})
    lines = ["# Data pipeline summary", ""]
    lines.append(f"- input: {inp['documents']:,} documents, {inp['characters']:,} characters")
    if stats["rejects"]:
        rej = ", ".join(f"{k} {v:,}" for k, v in sorted(stats["rejects"].items()))
        lines.append(f"- rejected records (see rejects/): {rej}")
    if out:
        lines.append(f"- output: {out['documents']:,} documents, {out['characters']:,} characters "
                     f"in {len(out['shards'])} shard(s)")
    lines += ["", "| step | docs in | docs out | chars in | chars out | modified |", "|---|---:|---:|---:|---:|---:|"]
    for name in stats.get("steps_order", list(stats["steps"])):
        s = stats["steps"].get(name)
        if s is None:
            continue
        lines.append(f"| {name} | {s['in_docs']:,} | {s['out_docs']:,} | {s['in_chars']:,} | {s['out_chars']:,} "
                     f"| {s['modified']:,} |")
    for name in stats.get("steps_order", list(stats["steps"])):
        s = stats["steps"].get(name)
        if not s or not (s["dropped"] or s["counters"]):
            continue
        lines += ["", f"## {name}", ""]
        for reason, n in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"- dropped by `{reason}`: {n:,} documents ({s['dropped_chars'].get(reason, 0):,} chars)")
            for ex in s["examples"].get(reason, []):
                excerpt = " ".join(ex["excerpt"].split())[:160]
                lines.append(f"  - `{ex['id']}`: {excerpt}")
        for k, v in sorted(s["counters"].items()):
            lines.append(f"- {k}: {v:,}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- dry run


def preview(cfg: DataConfig, sample: int) -> dict[str, Any]:
    """Run the steps on the first `sample` documents in memory (nothing written); returns stats."""
    from lmforge.data.dedup import content_key, first_occurrence_duplicates, near_duplicates, url_key
    from lmforge.data.minhash import MinHasher

    steps = build_steps(cfg)
    stats = StatsRecorder([s.name for s in steps], cfg.examples_per_rule)

    def on_reject(r: Reject) -> None:
        stats.rejects[reject_reason_kind(r.reason)] += 1

    def first_n() -> Iterable[Document]:
        n = 0
        for unit in expand_inputs(cfg.inputs):
            for doc in read_unit(unit, text_field=cfg.text_field, on_reject=on_reject, extract=False,
                                 max_bytes=max_record_bytes(cfg)):
                yield doc
                n += 1
                if n >= sample:
                    return

    with close_steps(steps):
        kept = list(process_documents(first_n(), steps, stats, cfg.max_doc_chars, on_reject))
    result = stats.to_dict()
    alive = np.ones(len(kept), dtype=bool)
    for name in [s for s in cfg.steps if s in DEDUP_STEPS]:
        s = result["steps"].setdefault(name, new_step_stats())
        s["in_docs"] = int(alive.sum())
        s["in_chars"] = sum(len(d.text) for d, a in zip(kept, alive) if a)
        removed: list[tuple[str, np.ndarray]] = []
        if name == "exact_dedup" and kept:
            ck = np.array([content_key(d.text) for d in kept], dtype=np.uint64)
            removed.append(("duplicate_content", first_occurrence_duplicates(ck, alive)))
            alive[removed[-1][1]] = False
            uk = np.array([url_key(d.metadata.get("url")) for d in kept], dtype=np.uint64)
            removed.append(("duplicate_url", first_occurrence_duplicates(uk, alive, skip_zero=True)))
            alive[removed[-1][1]] = False
        if name == "minhash_dedup" and kept:
            mh = cfg.minhash
            sigs = MinHasher(mh.ngram, mh.bands, mh.rows, mh.seed).signatures([d.text for d in kept])
            removed.append(("near_duplicate", near_duplicates(sigs, mh.bands, mh.rows, alive)))
            alive[removed[-1][1]] = False
        for reason, idx in removed:
            if idx.size:
                s["dropped"][reason] = int(idx.size)
                s["dropped_chars"][reason] = sum(len(kept[i].text) for i in idx.tolist())
                s["examples"][reason] = [{"id": kept[i].id, "source": kept[i].source,
                                          "excerpt": kept[i].text[:EXCERPT_CHARS]}
                                         for i in idx[: cfg.examples_per_rule].tolist()]
        s["out_docs"] = int(alive.sum())
        s["out_chars"] = sum(len(d.text) for d, a in zip(kept, alive) if a)
    result["steps_order"] = list(cfg.steps)
    return result
