"""report.md: the same summary, tables and samples as report.html, without the plots."""

from __future__ import annotations

from lmforge.report.tables import CURVES, SAMPLES, sections, summary_rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _quoted(text: str) -> list[str]:
    return ["> " + line if line else ">" for line in text.splitlines() or [""]]


def sample_lines(item: dict) -> list[str]:
    if isinstance(item.get("messages"), list):
        turns = [m for m in item["messages"] if isinstance(m, dict)]
        return [
            line
            for m in turns
            for line in (f"**{m.get('role', '')}:**", "", *_quoted(str(m.get("content", ""))), "")
        ]
    return ["```", f"{item.get('prompt', '')}{item.get('completion', '')}", "```", ""]


def table_lines(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    head = header if any(header) else ["", ""]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""]


def render_markdown(report: dict) -> str:
    lines = [
        f"# lmforge report: {report['name']}",
        "",
        f"{report['run_dir']} · written {report['created']}",
        "",
    ]
    lines += ["## Summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in summary_rows(report)]
    lines.append("")
    for part in sections(report):
        if part == CURVES:
            for stage, plots in report.get("plots", {}).items():
                lines += [
                    f"Curves for {stage} ({', '.join(title for title, _ in plots)}): see report.html.",
                    "",
                ]
        elif part == SAMPLES and report.get("samples"):
            lines += ["## Sample generations", ""]
            for stage, items in report["samples"].items():
                lines += [f"### {stage}", ""]
                for item in items:
                    lines += sample_lines(item)
        elif part != SAMPLES:
            lines += table_lines(*part)
    if report.get("config"):
        lines += ["## Recipe (resolved)", "", "```yaml", report["config"].rstrip(), "```", ""]
    return "\n".join(lines)
