"""Reading a run directory for the report: every file is optional, and an unreadable one reads as missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lmforge.report.summary import summarize

TRAIN_STAGES = ("pretrain", "sft", "dpo", "reward", "rl")


def stage_rank(stage: str) -> int:
    return TRAIN_STAGES.index(stage) if stage in TRAIN_STAGES else len(TRAIN_STAGES)


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not JSON (a report never fails on a bad file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records (a torn last line, as after a kill, is skipped)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()  # a bad line is skipped below
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def read_recipe(run_dir: Path) -> tuple[str | None, dict]:
    """config.yaml as text (shown verbatim) and as data (for seq_len and the like)."""
    try:
        text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return text, data if isinstance(data, dict) else {}


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds of every finished stage, from its _complete.json marker, in the order they finished."""
    found = []
    for marker in run_dir.glob("*/_complete.json"):
        rec = read_json(marker)
        if isinstance(rec, dict) and isinstance(rec.get("seconds"), (int, float)):
            finished = rec.get("finished") if isinstance(rec.get("finished"), (int, float)) else 0
            found.append((float(finished), marker.parent.name, float(rec["seconds"])))
    return {stage: seconds for _, stage, seconds in sorted(found)}


def model_figures(stage_dir: Path, recipe: dict) -> dict | None:
    """Parameters and training FLOPs per token of the stage's latest checkpoint (its config.json)."""
    from lmforge.checkpoint.consolidated import build_model_config, list_checkpoints, read_checkpoint_config
    from lmforge.errors import LmforgeError
    from lmforge.model.config import flops_per_token, num_params

    found = list_checkpoints(stage_dir / "checkpoints")
    if not found:
        return None
    ckpt = found[-1][1]
    try:
        cfg = build_model_config(ckpt, read_checkpoint_config(ckpt)["model"])
    except (LmforgeError, ValueError, TypeError):
        return None
    asked = train_section(recipe, stage_dir.name).get("seq_len")
    seq_len = min(asked, cfg.max_seq_len) if isinstance(asked, int) and asked > 0 else cfg.max_seq_len
    return {
        "params": num_params(cfg),
        "non_embedding_params": num_params(cfg, include_embedding=False),
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, seq_len),
    }


def train_section(recipe: dict, stage: str) -> dict:
    """The recipe's `train` section for `stage` (pretrain: top-level `train`; others: `<stage>.train`)."""
    section = recipe.get("train" if stage == "pretrain" else stage)
    if stage != "pretrain" and isinstance(section, dict):
        section = section.get("train")
    return section if isinstance(section, dict) else {}


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as plain data (also what the tests look at)."""
    run_dir = Path(run_dir)
    config_text, recipe = read_recipe(run_dir)
    out: dict[str, Any] = {"run_dir": str(run_dir), "name": run_dir.name, "config": config_text}
    out["data"] = read_json(run_dir / "data" / "stats.json")
    tok = read_json(run_dir / "tokenizer" / "lmforge_tokenizer.json")
    if isinstance(tok, dict):
        tok = {k: tok.get(k) for k in ("vocab_size", "pattern_name", "hash", "special_tokens")}
        tok["train"] = read_json(run_dir / "tokenizer" / "train_stats.json")
    out["tokenizer"] = tok
    out["tokens"] = read_json(run_dir / "tokens" / "meta.json")
    out["seconds"] = stage_seconds(run_dir)
    out["stages"] = {}
    for stage in TRAIN_STAGES:
        metrics = read_metrics(run_dir / stage / "metrics.jsonl")
        demo = read_json(run_dir / stage / "demo_eval.json")
        model = model_figures(run_dir / stage, recipe)
        if metrics or demo or model:
            out["stages"][stage] = {
                "metrics": metrics,
                "demo": demo if isinstance(demo, dict) else None,
                "model": model,
                "summary": summarize(metrics),
            }
    ev = read_json(run_dir / "eval" / "results.json")
    entries = ev.get("checkpoints") if isinstance(ev, dict) else None
    if isinstance(entries, list):
        entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("tasks"), dict)]
    out["eval"] = {"checkpoints": entries} if entries else None
    samples = read_json(run_dir / "eval" / "samples.json")
    if isinstance(samples, dict):  # in training order, as the stages ran
        samples = {
            stage: [item for item in items if isinstance(item, dict)]
            for stage, items in sorted(samples.items(), key=lambda kv: stage_rank(kv[0]))
            if isinstance(items, list)
        }
    out["samples"] = samples or None
    return out
