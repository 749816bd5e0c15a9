"""The stage runner behind `lmforge run`: ordering, completion markers, the run directory.

Stages form a chain in the order of STAGES. A stage's marker (RUN_DIR/<stage>/_complete.json)
holds a hash of its own recipe sections and of the previous stage's hash, so changing any
setting re-runs that stage and every stage after it, and nothing before it.

A stage function takes `(recipe, run_dir)` and writes only inside `run_dir`. Stage
functions are looked up lazily ("module:function"), so the runner imports nothing heavy.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import config_hash, dump_yaml, to_dict
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, atomic_write_text, read_json
from lmforge.recipe import Recipe


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", called as function(recipe, run_dir)
    sections: tuple[str, ...]  # recipe sections whose values the stage depends on
    summary: str


# The full chain, in order. A recipe's `stages` picks a subsequence.
STAGES: list[Stage] = [
    Stage("data", "lmforge.stages.data:run_stage", ("data",), "raw sources -> clean documents"),
    Stage("tokenizer", "lmforge.stages.tokenizer:train_stage", ("tokenizer",), "train the BPE tokenizer"),
    Stage("tokenize", "lmforge.stages.tokenize:tokenize_stage", ("tokenizer",), "documents -> token shards"),
    Stage("pretrain", "lmforge.stages.pretrain:pretrain_stage", ("model", "train", "parallel"), "pretrain"),
    Stage("sft", "lmforge.stages.posttrain:sft_stage", ("sft",), "supervised fine-tuning (chat, prompt-masked loss)"),
    Stage("dpo", "lmforge.stages.posttrain:dpo_stage", ("sft", "dpo"), "direct preference optimization"),
    Stage("reward", "lmforge.stages.posttrain:reward_stage", ("sft", "reward"), "reward model (Bradley-Terry)"),
    Stage("rl", "lmforge.stages.posttrain:rl_stage", ("sft", "rl"), "GRPO from a reward function or model"),
    Stage("eval", "lmforge.stages.eval:eval_stage", ("eval",), "evaluate every trained stage (bpb, tasks, samples)"),
    Stage("report", "lmforge.report:report_stage", (), "the report card: report.html + report.md"),
]

STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "_complete.json"


def stage_hash(recipe: Recipe, stage: Stage, previous: str) -> str:
    payload = {"stage": stage.name, "seed": recipe.seed, "previous": previous}
    payload.update({s: to_dict(getattr(recipe, s)) for s in stage.sections})
    return config_hash(payload)


def check_stages(names: list[str]) -> None:
    for n in names:
        if n not in STAGE_BY_NAME:
            import difflib

            close = difflib.get_close_matches(n, stage_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise LmforgeError(f"unknown stage {n!r}{hint} (stages: {', '.join(stage_names())})")


def run_recipe(recipe: Recipe, only: list[str] | None = None, force: bool = False) -> Path:
    """Run the recipe's stages (or `only` these), skipping finished ones unless `force`."""
    check_stages(recipe.stages)
    selected = only or recipe.stages
    check_stages(selected)
    run_dir = recipe.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(recipe))
    chain = [s for s in STAGES if s.name in recipe.stages or s.name in selected]
    previous = ""
    timings: dict[str, float] = {}
    for stage in chain:
        h = stage_hash(recipe, stage, previous)
        previous = h
        if stage.name not in selected:
            continue
        marker = marker_path(run_dir, stage.name)
        if not force and marker.exists() and read_json(marker).get("hash") == h:
            print(f"[lmforge] {stage.name}: already done ({marker}), skipping", flush=True)
            continue
        print(f"[lmforge] {stage.name}: {stage.summary}", flush=True)
        t0 = time.time()
        run_stage_function(stage, recipe, run_dir)
        timings[stage.name] = time.time() - t0
        atomic_write_json(marker, {"hash": h, "seconds": round(timings[stage.name], 2), "finished": time.time()})
        print(f"[lmforge] {stage.name}: done in {timings[stage.name]:.1f}s", flush=True)
    if "report" not in selected and timings:  # every run that did something ends with a fresh report card
        from lmforge.report import refresh_report

        refresh_report(run_dir)
    return run_dir


def run_stage_function(stage: Stage, recipe: Recipe, run_dir: Path) -> None:
    module_name, func_name = stage.target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    func(recipe, run_dir)
