"""The report's summary block and tables as text cells, shared by the HTML and Markdown writers."""

from __future__ import annotations

from typing import Any

from lmforge.report.summary import stage_costs

Table = tuple[str, list[str], list[list[str]]]  # title, header ("" cells: no header row), rows


def num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:.3e}"
    return str(v)


def count(v: float | None) -> str:
    """1234567 -> 1.23M: counts of parameters and tokens."""
    if v is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m {s:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def flops(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The block at the top: what was built, from how much, at what cost, where and from which code."""
    costs = stage_costs(report)
    models = [info["model"] for info in report["stages"].values() if info.get("model")]
    rows = []
    if models:
        m = models[0]
        rows.append(
            ("parameters", f"{count(m['params'])} ({count(m['non_embedding_params'])} without embeddings)")
        )
    trained = [(c["stage"], c["tokens"]) for c in costs if c["tokens"]]
    if trained:
        parts = ", ".join(f"{stage} {count(t)}" for stage, t in trained)
        rows.append(("tokens processed", f"{count(sum(t for _, t in trained))} ({parts})"))
    spent = [c["flops"] for c in costs if c["flops"]]
    if spent:
        rows.append(
            ("training FLOPs", f"{flops(sum(spent))} (6·N + attention per token, as MFU counts them)")
        )
    timed = [(c["stage"], c["seconds"]) for c in costs if c["seconds"] is not None]
    if timed:
        parts = ", ".join(f"{stage} {duration(s)}" for stage, s in timed)
        rows.append(("wall time", f"{duration(sum(s for _, s in timed))} ({parts})"))
    rows += [("device", report["device"]), ("software", report["software"]), ("git commit", report["commit"])]
    return rows


def stage_cost_table(report: dict) -> Table | None:
    rows = []
    for c in stage_costs(report):
        change = "-" if c["bpb_change"] is None else f"{c['bpb_change']:+.4f}"
        bpb = num(c["val_bpb"]) + (f" ({c['bpb_source']})" if c["bpb_source"] == "training val" else "")
        cost = [duration(c["seconds"]), num(c["steps"]), count(c["tokens"]), flops(c["flops"])]
        rows.append([c["stage"], bpb, change, *cost])
    if not rows:
        return None
    header = ["stage", "val bpb after it", "change", "wall time", "steps", "tokens", "FLOPs"]
    return "Stages: held-out bits per byte and what each stage cost", header, rows


def training_table(report: dict) -> Table | None:
    rows = []
    for stage, info in report["stages"].items():
        s = info["summary"]
        if s:
            rows.append(
                [
                    stage,
                    num(s["final_loss"]),
                    num(s["final_val_loss"]),
                    num(s["tokens_per_s"], 1),
                    num(s["mfu"], 2),
                    num(s["mem_gb"], 2),
                ]
            )
    if not rows:
        return None
    header = ["stage", "final loss", "val loss", "tokens/s (median)", "MFU % (median)", "peak mem GB"]
    return "Training: losses, throughput and MFU", header, rows


def data_table(report: dict) -> Table | None:
    data = report.get("data")
    if not isinstance(data, dict):
        return None
    rows = []
    steps = data.get("steps") or {}
    for name in data.get("steps_order") or list(steps):
        s = steps.get(name) or {}
        dropped = s.get("dropped") or {}
        reasons = ", ".join(f"{r} {num(c)}" for r, c in sorted(dropped.items(), key=lambda x: -x[1]))
        rows.append(
            [
                name,
                num(s.get("in_docs")),
                num(s.get("out_docs")),
                num(s.get("in_chars")),
                num(s.get("out_chars")),
                num(s.get("modified")),
                reasons or "-",
            ]
        )
    if not rows:
        return None
    header = ["step", "docs in", "docs out", "chars in", "chars out", "modified", "dropped (by rule)"]
    return "Data: documents kept and dropped per filter rule", header, rows


def tokenizer_table(report: dict) -> Table | None:
    tok, meta = report.get("tokenizer"), report.get("tokens")
    rows = []
    if isinstance(tok, dict):
        rows += [["vocabulary", num(tok.get("vocab_size"))], ["split pattern", str(tok.get("pattern_name"))]]
        rows.append(["special tokens", " ".join(sorted(tok.get("special_tokens") or {}))])
        train = tok.get("train") or {}
        if train:
            rows.append(["trained on", f"{num(train.get('chars'))} chars, {num(train.get('merges'))} merges"])
    if isinstance(meta, dict):
        for split in ("train", "val"):
            n, b = meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
            if n:
                rows.append([f"{split} tokens", f"{num(n)} ({num(b / n, 2) if b else '-'} bytes/token)"])
    return ("Tokenizer and token shards", ["", ""], rows) if rows else None


def demo_table(report: dict) -> Table | None:
    rows = []
    for stage, info in report["stages"].items():
        demo = info.get("demo") or {}
        before, after = demo.get("before") or {}, demo.get("after") or {}
        for key in sorted(set(before) | set(after)):
            rows.append([stage, key, num(before.get(key)), num(after.get(key))])
    if not rows:
        return None
    return "Post-training demo (held-out scenes)", ["stage", "metric", "before", "after"], rows


def eval_tables(report: dict) -> tuple[Table | None, list[Table]]:
    """(every stage side by side, or None with fewer than two; one table per checkpoint)."""
    ev = report.get("eval")
    if not isinstance(ev, dict):
        return None, []
    from lmforge.eval.api import result_rows

    entries = ev.get("checkpoints", [])
    per_checkpoint = []
    for entry in entries:
        rows = [
            [name, key, num(n), num(v), num(se), num(ch, 2)] for name, key, n, v, se, ch in result_rows(entry)
        ]
        title = f"Evaluation: {entry.get('stage')} (step {entry.get('step')})"
        per_checkpoint.append((title, ["task", "metric", "n", "value", "± stderr", "chance"], rows))
    if len(entries) < 2:
        return None, per_checkpoint
    values: dict[tuple, dict] = {}
    for entry in entries:
        for name, key, _n, v, _se, _ch in result_rows(entry):
            values.setdefault((name, key), {})[entry.get("stage")] = v
    stages = [entry.get("stage") for entry in entries]
    rows = [[name, key, *[num(vals.get(st)) for st in stages]] for (name, key), vals in values.items()]
    return ("Evaluation across stages", ["task", "metric", *map(str, stages)], rows), per_checkpoint


CURVES, SAMPLES = "curves", "samples"  # the sections that are not tables


def sections(report: dict) -> list[Table | str]:
    """The report's parts in reading order, the same for both writers; parts the run lacks are left out.

    What the run achieved and cost comes first, then how training went, then the details."""
    across, per_checkpoint = eval_tables(report)
    found = [
        stage_cost_table(report),
        CURVES,
        training_table(report),
        across,
        SAMPLES,
        demo_table(report),
        *per_checkpoint,
        data_table(report),
        tokenizer_table(report),
    ]
    return [part for part in found if part is not None]
