"""`lmforge run` re-running a training stage: new data or --force trains it from scratch (the old
checkpoints and metrics moved aside), while a change a resumed run allows (max_steps) continues it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmforge.checkpoint.consolidated import list_checkpoints
from lmforge.cli import main
from lmforge.recipe import load_recipe
from tiny_runs import save_tiny_pretrain

DEMO = {
    "which_play": 12,
    "who_speaks": 4,
    "continue_speech": 4,
    "small_talk": 4,
    "preference_pairs": 12,
    "eval_items": 6,
}
TRAIN = {
    "max_steps": 2,
    "micro_batch": 2,
    "seq_len": 96,
    "batch_tokens": 192,
    "warmup_steps": 1,
    "samples": 0,
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A run directory holding a tiny random 'pretrain' checkpoint with a tokenizer of demo text."""
    d = tmp_path_factory.mktemp("pretrained")
    recipe = load_recipe(None, {"seed": 3, **{f"sft.demo.{k}": v for k, v in DEMO.items()}})
    return save_tiny_pretrain(d, recipe)


def sft_recipe(pretrained: Path, tmp_path: Path, stages=("sft",), **sections) -> tuple[Path, Path]:
    """(recipe file, run directory) of a recipe of `stages` (default: sft alone) that start from the
    tiny checkpoint."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(pretrained, run_dir)
    recipe = {
        "name": "retrain",
        "seed": 3,
        "run_dir": str(run_dir),
        "stages": list(stages),
        "sft": {"demo": DEMO, "train": TRAIN},
        **sections,
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, run_dir


def losses(metrics: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def run(capsys, recipe: Path, *extra: str) -> str:
    assert main(["run", str(recipe), *extra]) == 0
    out = capsys.readouterr()
    return out.out + out.err


def test_new_data_and_force_retrain_a_finished_stage_and_max_steps_extends_it(pretrained, tmp_path, capsys):
    recipe, run_dir = sft_recipe(pretrained, tmp_path)
    metrics, previous = run_dir / "sft" / "metrics.jsonl", run_dir / "sft.previous"
    run(capsys, recipe)
    first = losses(metrics)
    assert [s for s, _ in first] == [1, 2]
    assert "already done" in run(capsys, recipe)

    # Other SFT data: the stage re-runs and trains from scratch; the first run is kept aside.
    out = run(capsys, recipe, "--sft.demo.which_play", "10")
    assert "starting fresh" in out and "resumed from" not in out
    assert losses(previous / "metrics.jsonl") == first
    assert [c.name for _, c in list_checkpoints(previous / "checkpoints")] == ["step_000002"]
    other = losses(metrics)
    assert [s for s, _ in other] == [1, 2] and other != first

    # --force trains from scratch again, reproducing the same run exactly.
    out = run(capsys, recipe, "--sft.demo.which_play", "10", "--force")
    assert "moved the previous run's checkpoints" in out and "resumed from" not in out
    assert losses(previous / "metrics.jsonl") == other
    assert losses(metrics) == other

    # More steps on the same data continue the finished run.
    out = run(capsys, recipe, "--sft.demo.which_play", "10", "--sft.train.max_steps", "3")
    assert "resumed from" in out and "starting fresh" not in out
    extended = losses(metrics)
    assert [s for s, _ in extended] == [1, 2, 3] and extended[:2] == other


def test_force_with_resume_always_continues(pretrained, tmp_path, capsys):
    recipe, run_dir = sft_recipe(pretrained, tmp_path)
    run(capsys, recipe)
    first = losses(run_dir / "sft" / "metrics.jsonl")
    out = run(capsys, recipe, "--force", "--sft.train.resume", "always")
    assert "resumed from" in out and not (run_dir / "sft.previous").exists()
    assert losses(run_dir / "sft" / "metrics.jsonl") == first


def test_data_key_holds_the_data_not_the_train_settings_or_the_layout():
    from lmforge.run import STAGE_BY_NAME, data_key

    def key(stage: str, **over) -> str:
        return data_key(load_recipe(None, over), STAGE_BY_NAME[stage], previous="")

    resumable = {"sft.train.max_steps": 7, "sft.train.eval_every": 3, "parallel.dp_shard": 2}
    assert key("sft", **resumable) == key("sft")
    assert key("sft", **{"sft.demo.who_speaks": 600}) != key("sft")
    assert key("dpo", **{"sft.train.lr": 1e-3}) == key("dpo")  # dpo's start is hashed by its weights
    assert key("dpo", **{"dpo.beta": 0.3}) != key("dpo")
    assert key("pretrain", **{"train.max_steps": 7, "parallel.dp_shard": 2}) == key("pretrain")


def test_rl_retrains_when_its_reward_model_is_retrained(pretrained, tmp_path, capsys):
    rl = {
        "reward": "model",
        "num_generations": 2,
        "prompts_per_step": 2,
        "max_new_tokens": 4,
        "train": {**TRAIN, "batch_tokens": 192},
    }
    recipe, run_dir = sft_recipe(pretrained, tmp_path, ("reward", "rl"), reward={"train": TRAIN}, rl=rl)
    run(capsys, recipe)
    first = losses(run_dir / "rl" / "metrics.jsonl")
    # Other reward training: the reward stage trains again, and rl, the same otherwise, from scratch.
    out = run(capsys, recipe, "--reward.train.lr", "1e-3")
    assert out.count("starting fresh") == 2 and "resumed from" not in out
    assert losses(run_dir / "rl.previous" / "metrics.jsonl") == first
    assert [s for s, _ in losses(run_dir / "rl" / "metrics.jsonl")] == [1, 2]
