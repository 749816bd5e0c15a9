"""The stage runner behind `lmforge run`: ordering, completion markers, the run directory.

Stages form a chain in the order of STAGES. A stage's marker (RUN_DIR/<stage>/_complete.json)
holds a hash of its own recipe sections and of the previous stage's hash, so changing any
setting re-runs that stage and every stage after it, and nothing before it.

A stage function takes `(recipe, run_dir)` and writes only inside `run_dir`; a training stage
also takes `data_key=` (`data_key` below), which its trainer puts in its resume check: a stage
re-run for other data trains from scratch instead of resuming the finished checkpoint. Stage
functions are looked up lazily ("module:function"), so the runner imports nothing heavy.

Under torchrun (`torchrun --nproc-per-node N -m lmforge run RECIPE`) every rank runs this loop.
The training stages (`distributed=True`) run on every rank together. The others run once, on
global rank 0, while the other ranks wait for its completion marker by polling the run directory:
no collective and so no process-group timeout, however long the stage takes (preparing a corpus
can take hours). A stage that fails on rank 0 leaves `_failed.json`, and the waiting ranks stop
with its message. Across nodes the run directory must be on a filesystem every node sees.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import config_hash, dump_yaml, settings_dict
from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json, atomic_write_text, read_json
from lmforge.recipe import Recipe


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", called as function(recipe, run_dir)
    sections: tuple[str, ...]  # recipe sections whose values the stage depends on
    summary: str
    distributed: bool = False  # runs on every rank under torchrun; otherwise once, on rank 0
    train: str = ""  # the recipe key of its TrainConfig ("": the stage trains no model)


# The full chain, in order. A recipe's `stages` picks a subsequence.
STAGES: list[Stage] = [
    Stage("data", "lmforge.stages.data:run_stage", ("data",), "raw sources -> clean documents"),
    Stage("tokenizer", "lmforge.stages.tokenizer:train_stage", ("tokenizer",), "train the BPE tokenizer"),
    Stage("tokenize", "lmforge.stages.tokenize:tokenize_stage", ("tokenizer",), "documents -> token shards"),
    Stage(
        "pretrain",
        "lmforge.stages.pretrain:pretrain_stage",
        ("model", "train", "parallel"),
        "pretrain",
        distributed=True,
        train="train",
    ),
    Stage(
        "sft",
        "lmforge.stages.posttrain:sft_stage",
        ("sft",),
        "supervised fine-tuning (chat, prompt-masked loss)",
        distributed=True,
        train="sft.train",
    ),
    Stage(
        "dpo",
        "lmforge.stages.posttrain:dpo_stage",
        ("sft", "dpo"),
        "direct preference optimization",
        distributed=True,
        train="dpo.train",
    ),
    Stage(
        "reward",
        "lmforge.stages.posttrain:reward_stage",
        ("sft", "reward"),
        "reward model (Bradley-Terry)",
        distributed=True,
        train="reward.train",
    ),
    Stage(
        "rl",
        "lmforge.stages.posttrain:rl_stage",
        ("sft", "rl"),
        "GRPO from a reward function or model",
        distributed=True,
        train="rl.train",
    ),
    Stage(
        "eval",
        "lmforge.stages.eval:eval_stage",
        ("eval",),
        "evaluate every trained stage (bpb, tasks, samples)",
    ),
    Stage("report", "lmforge.report:report_stage", (), "the report card: report.html + report.md"),
]

STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "_complete.json"


def stage_hash(recipe: Recipe, stage: Stage, previous: str) -> str:
    """The stage's sections without their logging-only keys (switching TensorBoard on re-runs nothing)."""
    payload = {"stage": stage.name, "seed": recipe.seed, "previous": previous}
    payload.update({s: settings_dict(getattr(recipe, s)) for s in stage.sections})
    return config_hash(payload)


def data_key(recipe: Recipe, stage: Stage, previous: str) -> str:
    """What a training stage trains on, for its trainer's resume check: the stage's sections (and,
    through `previous`, those of the stages before it) without the train settings, which the
    trainer hashes itself leaving out the ones a resumed run may change (max_steps, cadence), and
    without the parallel layout, which a checkpoint resumes across. Changing a data setting re-runs
    the stage (its stage hash) and, through this key, trains it from scratch instead of resuming
    the finished checkpoint."""
    payload: dict = {"stage": stage.name, "seed": recipe.seed, "previous": previous}
    for name in stage.sections:
        if name not in ("train", "parallel"):
            settings = settings_dict(getattr(recipe, name))
            payload[name] = {k: v for k, v in settings.items() if k != "train"}
    return config_hash(payload)


def trained_fresh(recipe: Recipe, stage: Stage) -> Recipe:
    """The recipe with the stage's train.resume `auto` set to `never` (a forced re-run trains from
    scratch, the old checkpoints moved aside); `always` (resume, and fail without a checkpoint) stays."""
    path = stage.train.split(".")
    cfg = functools.reduce(getattr, path, recipe)
    if cfg.resume != "auto":
        return recipe
    return _replaced(recipe, path, dataclasses.replace(cfg, resume="never"))


def _replaced(obj, path: list[str], value):
    """`obj` with the nested dataclass field at `path` replaced by `value`."""
    head, *rest = path
    return dataclasses.replace(obj, **{head: _replaced(getattr(obj, head), rest, value) if rest else value})


def check_stages(names: list[str]) -> None:
    for n in names:
        if n not in STAGE_BY_NAME:
            import difflib

            close = difflib.get_close_matches(n, stage_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise LmforgeError(f"unknown stage {n!r}{hint} (stages: {', '.join(stage_names())})")


def failure_path(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "_failed.json"


def launch_rank() -> tuple[int, int]:
    """(global rank, world size) as torchrun sets them; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_id() -> str:
    """The same string on every rank of one torchrun launch (and "" in a plain process)."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def wait_for_stage(
    run_dir: Path, stage: str, stage_hash_: str, this_launch: bool, poll_seconds: float = 2.0
) -> None:
    """Block until rank 0 has finished `stage` with this hash (in this launch, when `this_launch`:
    a forced re-run must not take the previous marker for the new one), or raise when it failed."""
    marker, failed = marker_path(run_dir, stage), failure_path(run_dir, stage)

    def matches(path: Path) -> bool:
        if not path.exists():
            return False
        record = read_json(path)
        return record.get("hash") == stage_hash_ and (not this_launch or record.get("launch") == launch_id())

    while True:
        if matches(marker):
            return
        if matches(failed):
            raise LmforgeError(
                f"{stage}: failed on rank 0 ({read_json(failed).get('error', '')}); see {failed}"
            )
        time.sleep(poll_seconds)


def run_recipe(
    recipe: Recipe, only: list[str] | None = None, force: bool = False, fresh: bool = False
) -> Path:
    """Run the recipe's stages (or `only` these), skipping finished ones unless `force`; with
    `fresh`, a training stage that runs trains from scratch (`trained_fresh`) rather than resuming."""
    check_stages(recipe.stages)
    selected = only or recipe.stages
    check_stages(selected)
    run_dir = recipe.run_path
    rank, world = launch_rank()
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(recipe))
    chain = [s for s in STAGES if s.name in recipe.stages or s.name in selected]
    previous = previous_data = ""
    timings: dict[str, float] = {}
    for stage in chain:
        h = stage_hash(recipe, stage, previous)
        key = data_key(recipe, stage, previous_data)
        previous, previous_data = h, key
        if stage.name not in selected:
            continue
        marker = marker_path(run_dir, stage.name)
        if not force and marker.exists() and read_json(marker).get("hash") == h:
            if rank == 0:
                print(f"[lmforge] {stage.name}: already done ({marker}), skipping", flush=True)
            continue
        if world > 1 and not stage.distributed and rank != 0:
            wait_for_stage(run_dir, stage.name, h, this_launch=force)
            continue
        if force and rank == 0:
            marker.unlink(missing_ok=True)
        print(f"[lmforge] {stage.name}: {stage.summary}", flush=True)
        t0 = time.time()
        stage_recipe = trained_fresh(recipe, stage) if fresh and stage.train else recipe
        run_marked(stage, stage_recipe, run_dir, h, key, leader=rank == 0)
        if rank != 0:  # the next stage may read what rank 0 publishes last
            wait_for_stage(run_dir, stage.name, h, this_launch=True)
        timings[stage.name] = time.time() - t0
        if rank == 0:
            from lmforge.report.sentence import stage_done_line

            print(stage_done_line(stage.name, timings[stage.name], run_dir / stage.name), flush=True)
    if "report" not in selected and timings and rank == 0:  # a run that did something ends with a report
        from lmforge.report import refresh_report

        refresh_report(run_dir)
    return run_dir


def run_marked(stage: Stage, recipe: Recipe, run_dir: Path, h: str, key: str, leader: bool) -> None:
    """Run a stage; the leader (rank 0) writes its completion marker, or `_failed.json` if it raises."""
    failed = failure_path(run_dir, stage.name)
    if leader:
        failed.unlink(missing_ok=True)
    t0 = time.time()
    try:
        run_stage_function(stage, recipe, run_dir, key)
    except BaseException as e:
        if leader:
            error = f"{type(e).__name__}: {e}"[:2000]
            atomic_write_json(failed, {"hash": h, "launch": launch_id(), "error": error, "at": time.time()})
        raise
    if leader:
        seconds = round(time.time() - t0, 2)
        record = {"hash": h, "launch": launch_id(), "seconds": seconds, "finished": time.time()}
        atomic_write_json(marker_path(run_dir, stage.name), record)


def run_stage_function(stage: Stage, recipe: Recipe, run_dir: Path, key: str = "") -> None:
    """Call the stage function; a training stage also gets its `data_key` (as `data_key=`)."""
    module_name, func_name = stage.target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    func(recipe, run_dir, **({"data_key": key} if stage.train else {}))
