"""The statistics of a data run: counts per step and per rule, examples, rejects, and summary.md.

Each task records its own (`StatsRecorder`); `merge_stats` sums them in task order, the dedup
barrier's removals are added per step (`add_dedup_stats`), and `render_summary` turns the
result into the Markdown summary. The dry-run preview builds the same dictionary in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from lmforge.data.documents import Document
from lmforge.data.registry import DEDUP_STEPS

EXCERPT_CHARS = 240


def new_step_stats() -> dict[str, Any]:
    return {
        "in_docs": 0,
        "in_chars": 0,
        "out_docs": 0,
        "out_chars": 0,
        "modified": 0,
        "dropped": {},
        "dropped_chars": {},
        "counters": {},
        "examples": {},
    }


def example(doc: Document) -> dict[str, str]:
    return {"id": doc.id, "source": doc.source, "excerpt": doc.text[:EXCERPT_CHARS]}


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
            ex.append(example(doc))

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


def record_dedup_drop(dropped: dict[str, Any], step: str, rule: str, doc: Document, examples: int) -> None:
    """Count one document removed by a dedup step into `dropped` ("step:rule" -> docs, chars, examples)."""
    d = dropped.setdefault(f"{step}:{rule}", {"docs": 0, "chars": 0, "examples": []})
    d["docs"] += 1
    d["chars"] += len(doc.text)
    if len(d["examples"]) < examples:
        d["examples"].append(example(doc))


def add_dedup_stats(
    stats: dict[str, Any], drops: Iterable[dict[str, Any]], steps: list[str], docs_in: int, examples: int
) -> None:
    """Per-step statistics of the dedup barriers, from the per-task `record_dedup_drop` dictionaries.

    `docs_in` is the number of documents the per-document steps kept; in/out characters follow
    from the per-document steps' output.
    """
    drops = list(drops)
    for name in [s for s in steps if s in DEDUP_STEPS]:
        s = stats["steps"].setdefault(name, new_step_stats())
        s["in_docs"] = docs_in
        for part in drops:
            for key, d in part.items():
                step, reason = key.split(":")
                if step != name:
                    continue
                s["dropped"][reason] = s["dropped"].get(reason, 0) + d["docs"]
                s["dropped_chars"][reason] = s["dropped_chars"].get(reason, 0) + d["chars"]
                have = s["examples"].setdefault(reason, [])
                have.extend(d["examples"][: max(0, examples - len(have))])
        s["out_docs"] = s["in_docs"] - sum(s["dropped"].values())
        docs_in = s["out_docs"]
    chars = stats["input"]["characters"]
    for name in steps:
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
        lines.append(
            f"- output: {out['documents']:,} documents, {out['characters']:,} characters "
            f"in {len(out['shards'])} shard(s)"
        )
    lines += [
        "",
        "| step | docs in | docs out | chars in | chars out | modified |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in stats.get("steps_order", list(stats["steps"])):
        s = stats["steps"].get(name)
        if s is None:
            continue
        lines.append(
            f"| {name} | {s['in_docs']:,} | {s['out_docs']:,} | {s['in_chars']:,} | {s['out_chars']:,} "
            f"| {s['modified']:,} |"
        )
    for name in stats.get("steps_order", list(stats["steps"])):
        s = stats["steps"].get(name)
        if not s or not (s["dropped"] or s["counters"]):
            continue
        lines += ["", f"## {name}", ""]
        for reason, n in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(
                f"- dropped by `{reason}`: {n:,} documents ({s['dropped_chars'].get(reason, 0):,} chars)"
            )
            for ex in s["examples"].get(reason, []):
                excerpt = " ".join(ex["excerpt"].split())[:160]
                lines.append(f"  - `{ex['id']}`: {excerpt}")
        for k, v in sorted(s["counters"].items()):
            lines.append(f"- {k}: {v:,}")
    return "\n".join(lines) + "\n"
