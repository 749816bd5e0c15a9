"""The run's report card: RUN_DIR/report.html (self-contained, plots inline as PNG) and report.md.

Everything comes from files the stages left in the run directory, and every part is optional
(a run that only pretrained gets a report without eval tables):

  config.yaml                      the resolved recipe
  data/stats.json                  documents and characters kept / dropped per pipeline step and reason
  tokenizer/, tokens/meta.json     vocabulary, specials, token counts, bytes per token
  <stage>/metrics.jsonl            loss, lr, val_loss, tokens/s, MFU per step (pretrain, sft, dpo, reward, rl)
  <stage>/demo_eval.json           the post-training demo's before / after metrics
  eval/results.json, samples.json  evaluation tables per checkpoint and sample generations
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

from lmforge.fileio import atomic_write_text

TRAIN_STAGES = ("pretrain", "sft", "dpo", "reward", "rl")


# ---------------------------------------------------------------------------- reading


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records (a torn last line, as after a kill, is skipped)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def hardware() -> dict[str, str]:
    """The machine writing the report (the trainer's own figures are in the metrics)."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu cores": str(os.cpu_count()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return info


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as plain data (also what the tests look at)."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run_dir": str(run_dir), "name": run_dir.name, "hardware": hardware()}
    cfg = run_dir / "config.yaml"
    out["config"] = cfg.read_text(encoding="utf-8") if cfg.is_file() else None
    out["data"] = _json(run_dir / "data" / "stats.json")
    tok = _json(run_dir / "tokenizer" / "lmforge_tokenizer.json")
    if isinstance(tok, dict):
        tok = {k: tok.get(k) for k in ("vocab_size", "pattern_name", "hash", "special_tokens")}
        tok["train"] = _json(run_dir / "tokenizer" / "train_stats.json")
    out["tokenizer"] = tok
    out["tokens"] = _json(run_dir / "tokens" / "meta.json")
    out["stages"] = {}
    for stage in TRAIN_STAGES:
        metrics = read_metrics(run_dir / stage / "metrics.jsonl")
        demo = _json(run_dir / stage / "demo_eval.json")
        if metrics or demo:
            out["stages"][stage] = {"metrics": metrics, "demo": demo, "summary": summarize(metrics)}
    out["eval"] = _json(run_dir / "eval" / "results.json")
    out["samples"] = _json(run_dir / "eval" / "samples.json")
    return out


def summarize(metrics: list[dict]) -> dict[str, Any]:
    """Last step, last losses, median throughput and MFU over the run (first step excluded: warm-up)."""
    if not metrics:
        return {}
    train = [m for m in metrics if "loss" in m]
    steady = train[1:] or train

    def median(key: str):
        vals = sorted(float(m[key]) for m in steady if isinstance(m.get(key), (int, float)))
        return vals[len(vals) // 2] if vals else None

    val = [m for m in metrics if isinstance(m.get("val_loss"), (int, float))]
    return {
        "steps": max((int(m.get("step", 0)) for m in metrics), default=0),
        "final_loss": train[-1]["loss"] if train else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "final_val_bpb": next((m["val_bpb"] for m in reversed(metrics) if "val_bpb" in m), None),
        "tokens_per_s": median("tokens_per_s"),
        "mfu": median("mfu"),
        "mem_gb": max(
            (float(m["mem_gb"]) for m in metrics if isinstance(m.get("mem_gb"), (int, float))), default=None
        ),
        "elapsed_s": max((float(m["elapsed_s"]) for m in metrics if "elapsed_s" in m), default=None),
    }


# ---------------------------------------------------------------------------- plots


def curve_png(metrics: list[dict], stage: str) -> bytes | None:
    """Loss (train and val) and learning rate against step, as one PNG."""
    train = [
        (m["step"], m["loss"]) for m in metrics if "step" in m and isinstance(m.get("loss"), (int, float))
    ]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = [(m["step"], m["val_loss"]) for m in metrics if isinstance(m.get("val_loss"), (int, float))]
    lr = [(m["step"], m["lr"]) for m in metrics if isinstance(m.get("lr"), (int, float))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), dpi=100)
    ax = axes[0]
    ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", color="#d62728", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{stage}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    if lr:
        ax.plot(*zip(*lr), color="#2ca02c", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{stage}: learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------- rendering


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:.3e}"
    return str(v)


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (title, header, rows): shared by the HTML and Markdown writers."""
    out = []
    out.append(
        (
            "Hardware (where this report was written)",
            ["", ""],
            [[k, v] for k, v in report["hardware"].items()],
        )
    )
    data = report.get("data")
    if isinstance(data, dict):
        rows = []
        steps = data.get("steps") or {}
        for name in data.get("steps_order") or list(steps):
            s = steps.get(name) or {}
            dropped = s.get("dropped") or {}
            reasons = ", ".join(f"{r} {_num(c)}" for r, c in sorted(dropped.items(), key=lambda x: -x[1]))
            rows.append(
                [
                    name,
                    _num(s.get("in_docs")),
                    _num(s.get("out_docs")),
                    _num(s.get("in_chars")),
                    _num(s.get("out_chars")),
                    _num(s.get("modified")),
                    reasons or "-",
                ]
            )
        if rows:
            header = ["step", "docs in", "docs out", "chars in", "chars out", "modified", "dropped (by rule)"]
            out.append(("Data: documents kept and dropped per filter rule", header, rows))
    tok, meta = report.get("tokenizer"), report.get("tokens")
    rows = []
    if isinstance(tok, dict):
        rows += [["vocabulary", _num(tok.get("vocab_size"))], ["split pattern", str(tok.get("pattern_name"))]]
        rows.append(["special tokens", " ".join(sorted(tok.get("special_tokens") or {}))])
        train = tok.get("train") or {}
        if train:
            rows.append(
                ["trained on", f"{_num(train.get('chars'))} chars, {_num(train.get('merges'))} merges"]
            )
    if isinstance(meta, dict):
        for split in ("train", "val"):
            n, b = meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
            if n:
                rows.append([f"{split} tokens", f"{_num(n)} ({_num(b / n, 2) if b else '-'} bytes/token)"])
    if rows:
        out.append(("Tokenizer and token shards", ["", ""], rows))
    rows = []
    for stage, info in report["stages"].items():
        s = info["summary"]
        if s:
            rows.append(
                [
                    stage,
                    _num(s["steps"]),
                    _num(s["final_loss"]),
                    _num(s["final_val_loss"]),
                    _num(s["final_val_bpb"]),
                    _num(s["tokens_per_s"], 1),
                    _num(s["mfu"], 2),
                    _num(s["mem_gb"], 2),
                    _num(s["elapsed_s"], 1),
                ]
            )
    if rows:
        header = [
            "stage",
            "steps",
            "final loss",
            "val loss",
            "val bpb",
            "tokens/s (median)",
            "MFU %",
            "peak mem GB",
            "seconds",
        ]
        out.append(("Training: throughput and MFU", header, rows))
    rows = []
    for stage, info in report["stages"].items():
        demo = info.get("demo") or {}
        before, after = demo.get("before") or {}, demo.get("after") or {}
        for key in sorted(set(before) | set(after)):
            rows.append([stage, key, _num(before.get(key)), _num(after.get(key))])
    if rows:
        out.append(("Post-training demo (held-out scenes)", ["stage", "metric", "before", "after"], rows))
    ev = report.get("eval")
    if isinstance(ev, dict):
        from lmforge.eval.api import result_rows

        for entry in ev.get("checkpoints", []):
            rows = [
                [name, key, _num(n), _num(v), _num(se), _num(ch, 2)]
                for name, key, n, v, se, ch in result_rows(entry)
            ]
            title = f"Evaluation: {entry.get('stage')} (step {entry.get('step')})"
            out.append((title, ["task", "metric", "n", "value", "± stderr", "chance"], rows))
        entries = ev.get("checkpoints", [])
        if len(entries) > 1:  # every stage side by side: what each stage changed
            values: dict[tuple, dict] = {}
            for entry in entries:
                for name, key, _n, v, _se, _ch in result_rows(entry):
                    values.setdefault((name, key), {})[entry.get("stage")] = v
            stages = [entry.get("stage") for entry in entries]
            rows = [
                [name, key, *[_num(vals.get(st)) for st in stages]] for (name, key), vals in values.items()
            ]
            out.append(("Evaluation across stages", ["task", "metric", *map(str, stages)], rows))
    return out


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.6em; color: #333; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
img { max-width: 100%; border: 1px solid #eee; }
.sample { border-left: 3px solid #1f77b4; padding-left: .8em; margin: .8em 0; }
.meta { color: #666; }
"""


def _is_num(s: str) -> bool:
    return (
        s.replace(",", "")
        .replace(".", "", 1)
        .replace("-", "", 1)
        .replace("e", "", 1)
        .replace("+", "")
        .isdigit()
    )


def render_html(report: dict) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lmforge report: {e(report['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>lmforge report: {e(report['name'])}</h1>",
        f"<p class='meta'>{e(report['run_dir'])} · written {e(report['created'])}</p>",
    ]
    for title, header, rows in tables(report):
        parts.append(f"<h2>{e(title)}</h2><table>")
        if any(header):
            parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = "".join(
                f"<td class='num'>{e(c)}</td>" if any(header) and _is_num(c) else f"<td>{e(c)}</td>"
                for c in row
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    for stage, png in report.get("plots", {}).items():
        parts.append(f"<h2>Curves: {e(stage)}</h2>")
        parts.append(f"<img alt='{e(stage)} loss and learning rate' src='data:image/png;base64,{png}'>")
    samples = report.get("samples")
    if isinstance(samples, dict) and samples:
        parts.append("<h2>Sample generations</h2><p class='meta'>prompt in bold; sampled (eval.sample_*)</p>")
        for stage, items in samples.items():
            parts.append(f"<h3>{e(stage)}</h3>")
            for s in items:
                parts.append(
                    f"<div class='sample'><pre><b>{e(s.get('prompt', ''))}</b>{e(s.get('completion', ''))}</pre></div>"
                )
    if report.get("config"):
        parts.append("<h2>Recipe (resolved)</h2><details><summary>config.yaml (click to expand)</summary>")
        parts.append(f"<pre>{e(report['config'])}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(report: dict) -> str:
    lines = [
        f"# lmforge report: {report['name']}",
        "",
        f"{report['run_dir']} · written {report['created']}",
        "",
    ]
    for title, header, rows in tables(report):
        lines += [f"## {title}", ""]
        head = header if any(header) else ["", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    for stage in report.get("plots", {}):
        lines += [f"Loss and learning-rate curves for {stage}: see report.html.", ""]
    samples = report.get("samples")
    if isinstance(samples, dict) and samples:
        lines += ["## Sample generations", ""]
        for stage, items in samples.items():
            lines += [f"### {stage}", ""]
            for s in items:
                lines += ["```", f"{s.get('prompt', '')}{s.get('completion', '')}", "```", ""]
    if report.get("config"):
        lines += ["## Recipe (resolved)", "", "```yaml", report["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.html and RUN_DIR/report.md; returns their paths."""
    run_dir = Path(run_dir)
    report = collect(run_dir)
    report["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["plots"] = {}
    for stage, info in report["stages"].items():
        png = curve_png(info["metrics"], stage)
        if png:
            report["plots"][stage] = base64.b64encode(png).decode("ascii")
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, render_html(report))
    atomic_write_text(md_path, render_markdown(report))
    return html_path, md_path


def report_stage(recipe: Any, run_dir: Path) -> None:
    html_path, _ = write_report(run_dir)
    print(f"[lmforge] report: {html_path}", flush=True)


def refresh_report(run_dir: Path) -> None:
    """Rewrite the report at the end of `lmforge run`; a report problem never fails the run."""
    try:
        html_path, _ = write_report(run_dir)
        print(f"[lmforge] report: {html_path}", flush=True)
    except Exception as e:  # noqa: BLE001 - the report is a by-product of the run
        print(f"[lmforge] report: not written ({type(e).__name__}: {e})", flush=True)
