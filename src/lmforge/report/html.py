"""report.html: one self-contained page (inline CSS, plots as data: PNGs, no scripts)."""

from __future__ import annotations

import html
import re

from lmforge.report.tables import CURVES, SAMPLES, sections, summary_rows

SPECIAL = re.compile(r"<\|[a-z_]+\|>")  # the tokenizer's special tokens, as decoded text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1380px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.6em; color: #333; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; white-space: pre-wrap; }
.meta { color: #666; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; background: #f6f8fa;
           border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; font-size: 15px; }
.summary dt { font-weight: 600; color: #444; }
.summary dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 8px; }
.plots img { width: 100%; border: 1px solid #eee; }
.sample { border-left: 3px solid #1f77b4; padding-left: .8em; margin: .8em 0; }
.chat { max-width: 820px; margin: .8em 0 1.4em; padding: 10px; border: 1px solid #e3e3e3;
        border-radius: 8px; background: #fafafa; }
.turn { display: flex; margin: 6px 0; }
.turn.user { justify-content: flex-end; }
.bubble { max-width: 75%; padding: 8px 12px; border-radius: 12px; white-space: pre-wrap; line-height: 1.35; }
.user .bubble { background: #1f77b4; color: #fff; border-bottom-right-radius: 3px; }
.assistant .bubble { background: #e9ecef; border-bottom-left-radius: 3px; }
.system .bubble { background: #fff3cd; font-style: italic; }
.role { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; opacity: .7; margin-bottom: 2px; }
.special { font: 11px monospace; background: #ddd; color: #555; border-radius: 3px; padding: 0 3px; }
"""


def text_with_specials(text: str) -> str:
    """Escaped text with special tokens shown as small tags, so they do not read as words."""
    out, pos = [], 0
    for m in SPECIAL.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        out.append(f"<span class='special'>{html.escape(m.group()[2:-2])}</span>")
        pos = m.end()
    return "".join(out) + html.escape(text[pos:])


def turn(message: dict) -> str:
    role = html.escape(str(message.get("role", "")))
    body = text_with_specials(str(message.get("content", ""))) or "<span class='meta'>(empty reply)</span>"
    return f"<div class='turn {role}'><div class='bubble'><div class='role'>{role}</div>{body}</div></div>"


def conversation(messages: list) -> str:
    return "<div class='chat'>" + "".join(turn(m) for m in messages if isinstance(m, dict)) + "</div>"


def sample(item: dict) -> str:
    if isinstance(item.get("messages"), list):
        return conversation(item["messages"])
    prompt, completion = str(item.get("prompt", "")), str(item.get("completion", ""))
    return (
        f"<div class='sample'><pre><b>{html.escape(prompt)}</b>{text_with_specials(completion)}</pre></div>"
    )


def curves(stage: str, plots: list[tuple[str, str]]) -> str:
    e = html.escape
    imgs = "".join(
        f"<img alt='{e(stage)}: {e(title)}' src='data:image/png;base64,{png}'>" for title, png in plots
    )
    return f"<h2>Curves: {e(stage)}</h2><div class='plots'>{imgs}</div>"


def samples(by_stage: dict | None) -> str:
    if not by_stage:
        return ""
    parts = [
        "<h2>Sample generations</h2><p class='meta'>base models continue the prompt (in bold); "
        "post-trained models answer it as a chat turn (eval.sample_prompts, seeded)</p>"
    ]
    for stage, items in by_stage.items():
        parts.append(f"<h3>{html.escape(stage)}</h3>")
        parts += [sample(s) for s in items]
    return "".join(parts)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    parts = [f"<h2>{e(title)}</h2><table>"]
    if any(header):
        parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(
            f"<td class='num'>{e(c)}</td>" if any(header) and _is_num(c) else f"<td>{e(c)}</td>" for c in row
        )
        parts.append(f"<tr>{cells}</tr>")
    return "".join(parts) + "</table>"


def _is_num(s: str) -> bool:
    return (
        s.replace(",", "")
        .replace(".", "", 1)
        .replace("-", "", 1)
        .replace("+", "")
        .replace("e", "", 1)
        .isdigit()
    )


def render_html(report: dict) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lmforge report: {e(report['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>lmforge report: {e(report['name'])}</h1>",
        f"<p class='meta'>{e(report['run_dir'])} · written {e(report['created'])}</p>",
        "<h2>Summary</h2><dl class='summary'>",
        *(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in summary_rows(report)),
        "</dl>",
    ]
    for part in sections(report):
        if part == CURVES:
            parts += [curves(stage, plots) for stage, plots in report.get("plots", {}).items()]
        elif part == SAMPLES:
            parts.append(samples(report.get("samples")))
        else:
            parts.append(table(*part))
    if report.get("config"):
        parts.append("<h2>Recipe (resolved)</h2><details><summary>config.yaml (click to expand)</summary>")
        parts.append(f"<pre>{e(report['config'])}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
