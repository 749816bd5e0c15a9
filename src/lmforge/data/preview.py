"""The dry run (`lmforge data --dry-run`): the steps and the dedup decision on the first documents,
in memory, with the runner's own code; nothing is written."""

from __future__ import annotations

import itertools
from typing import Any

from lmforge.data.config import DataConfig
from lmforge.data.dedup import DEDUP_REASONS, DedupKeys, dedup_reasons
from lmforge.data.process import build_steps, close_steps, process_documents, read_units
from lmforge.data.readers import expand_inputs
from lmforge.data.rejects import Reject, reject_reason_kind
from lmforge.data.stats import StatsRecorder, add_dedup_stats, record_dedup_drop


def preview(cfg: DataConfig, sample: int) -> dict[str, Any]:
    """Statistics of a run over the first `sample` documents (as stats.json has them, without output)."""
    steps = build_steps(cfg)
    stats = StatsRecorder([s.name for s in steps], cfg.examples_per_rule)

    def on_reject(r: Reject) -> None:
        stats.rejects[reject_reason_kind(r.reason)] += 1

    docs = itertools.islice(read_units(expand_inputs(cfg.inputs), cfg, on_reject), sample)
    with close_steps(steps):
        kept = list(process_documents(docs, steps, stats, cfg.max_doc_chars, on_reject))
    keys = DedupKeys("exact_dedup" in cfg.steps, cfg.minhash if "minhash_dedup" in cfg.steps else None)
    for doc in kept:
        keys.add(doc)
    reasons = dedup_reasons(
        len(kept),
        keys.keys() if keys.exact else None,
        cfg.exact_dedup,
        [keys.signatures()] if keys.hasher is not None else None,
        cfg.minhash,
    )
    dropped: dict[str, Any] = {}
    for doc, code in zip(kept, reasons.tolist()):
        if code:
            record_dedup_drop(dropped, *DEDUP_REASONS[code], doc, cfg.examples_per_rule)
    result = stats.to_dict()
    add_dedup_stats(result, [dropped], cfg.steps, len(kept), cfg.examples_per_rule)
    result["steps_order"] = list(cfg.steps)
    return result
