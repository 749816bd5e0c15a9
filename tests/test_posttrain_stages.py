"""The post-training stages end to end on a tiny model: sft -> dpo, reward, rl (GRPO) through the one
Trainer."""

from __future__ import annotations

import json

import pytest

from lmforge.checkpoint.consolidated import list_checkpoints, load_model
from lmforge.recipe import load_recipe
from tiny_runs import save_tiny_pretrain

TINY_TRAIN = {
    "max_steps": 2,
    "micro_batch": 2,
    "seq_len": 96,
    "batch_tokens": 192,
    "warmup_steps": 1,
    "samples": 0,
}


def overrides(run_dir) -> dict:
    out = {"run_dir": str(run_dir), "seed": 3}
    demo = {"which_play": 12, "who_speaks": 4, "continue_speech": 4, "preference_pairs": 12, "eval_items": 6}
    out.update({f"sft.demo.{k}": v for k, v in demo.items()})
    for section in ("sft", "dpo", "reward", "rl"):
        out.update({f"{section}.train.{k}": v for k, v in TINY_TRAIN.items()})
    out.update(
        {
            "rl.num_generations": 2,
            "rl.prompts_per_step": 2,
            "rl.max_new_tokens": 4,
            "rl.train.batch_tokens": 192,
        }
    )
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding a (random, tiny) 'pretrain' checkpoint with a tokenizer trained on demo
    text."""
    d = tmp_path_factory.mktemp("run")
    recipe = load_recipe(None, overrides(d))
    return save_tiny_pretrain(d, recipe)


def rank0_first_recorder(monkeypatch) -> list[str]:
    """Patches `main_process_first` and the demo task builder: each build is recorded as "inside"
    when it runs within the rank-0-first block (under torchrun: rank 0 builds, then the others)."""
    import contextlib

    import lmforge.distributed
    from lmforge.stages import posttrain as stages

    calls: list[str] = []
    depth = [0]

    @contextlib.contextmanager
    def recording(device="auto"):
        depth[0] += 1
        yield
        depth[0] -= 1

    build = stages.demo_tasks

    def recorded_build(recipe):
        calls.append("inside" if depth[0] else "outside")
        return build(recipe)

    monkeypatch.setattr(lmforge.distributed, "main_process_first", recording)
    monkeypatch.setattr(stages, "demo_tasks", recorded_build)
    return calls


def test_sft_then_dpo_reward_rl(run_dir, capsys, monkeypatch):
    from lmforge.posttrain.reward import VALUE_HEAD_FILE, load_reward_model
    from lmforge.stages.posttrain import dpo_stage, reward_stage, rl_stage, sft_stage

    data_builds = rank0_first_recorder(monkeypatch)
    recipe = load_recipe(None, overrides(run_dir))
    sft = sft_stage(recipe, run_dir)
    assert sft["train"]["step"] == 2 and 0.0 <= sft["after"]["which_play_acc"] <= 1.0
    assert list_checkpoints(run_dir / "sft" / "checkpoints")
    out = capsys.readouterr().out
    assert "before sft: held-out which-play accuracy" in out and "after sft" in out

    dpo = dpo_stage(recipe, run_dir)
    metrics = [json.loads(line) for line in (run_dir / "dpo" / "metrics.jsonl").read_text().splitlines()]
    first = next(m for m in metrics if "rewards/margins" in m)
    # step 1: policy == reference, so the loss is ln 2 and every implicit reward is 0
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/accuracies"] == 0.0
    assert "starting from" in capsys.readouterr().out and dpo["before"] == pytest.approx(sft["after"])
    model, _ = load_model(run_dir / "dpo")
    assert model.cfg.d_model == 32

    reward = reward_stage(recipe, run_dir)
    ckpt = list_checkpoints(run_dir / "reward" / "checkpoints")[-1][1]
    assert (ckpt / VALUE_HEAD_FILE).exists() and 0.0 <= reward["held_out_accuracy"] <= 1.0
    rm, head, _ = load_reward_model(run_dir / "reward")  # model.safetensors is a plain Transformer again
    assert head.weight.shape == (1, 32) and not hasattr(rm, "value_head")
    more = reward_stage(load_recipe(None, {**overrides(run_dir), "reward.train.max_steps": 3}), run_dir)
    assert (
        more["train"]["step"] == 3 and "resumed from" in capsys.readouterr().out
    )  # continues the split checkpoint
    assert load_reward_model(run_dir / "reward")[1].weight.shape == (1, 32)

    recipe = load_recipe(None, {**overrides(run_dir), "rl.reward": "model", "rl.num_iterations": 2})
    rl = rl_stage(recipe, run_dir)
    rl_metrics = [json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert rl["train"]["step"] == 2 and "reward" in rl_metrics[0] and "clip_ratio" in rl_metrics[0]
    rewards = [m["reward"] for m in rl_metrics if "reward" in m]
    assert (rl["reward_first_quarter"], rl["reward_last_quarter"]) == (rewards[0], rewards[-1])
    out = capsys.readouterr().out
    assert "rl: mean reward" in out
    assert "before rl: mean reward of" in out and "after rl: mean reward of" in out
    held_out = rl["held_out_reward"]
    assert held_out["prompts"] > 0 and set(held_out) == {"before", "after", "prompts"}
    assert data_builds == ["inside"] * 5  # sft, dpo, reward twice, rl: each prepares its data rank 0 first


def test_sft_from_jsonl_without_packing(run_dir, tmp_path):
    from lmforge.stages.posttrain import sft_stage

    data = tmp_path / "chat.jsonl"
    rows = [
        {"instruction": "Name a play.", "output": "Hamlet"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(
        None,
        {
            **overrides(tmp_path / "run2"),
            "sft.data": [str(data)],
            "sft.packing": False,
            "sft.train.init_from": str(run_dir / "pretrain"),
        },
    )
    summary = sft_stage(recipe, tmp_path / "run2")
    assert "after" not in summary and summary["train"]["step"] == 2


def test_missing_start_checkpoint_is_a_clear_error(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.stages.posttrain import dpo_stage

    with pytest.raises(LmforgeError, match="dpo: no checkpoint to start from"):
        dpo_stage(load_recipe(None, overrides(tmp_path)), tmp_path)


def test_sft_and_dpo_mix_pretraining_windows_from_the_run(run_dir, tmp_path, capsys):
    import shutil

    from lmforge.errors import LmforgeError
    from lmforge.shards import tokenize_documents
    from lmforge.stages.posttrain import dpo_stage, sft_stage

    run = tmp_path / "mixed"
    shutil.copytree(run_dir / "pretrain", run / "pretrain")
    mixed = {**overrides(run), "sft.mix_pretrain": 0.5, "dpo.mix_pretrain": 1.0}
    with pytest.raises(LmforgeError, match="tokenize stage"):
        sft_stage(load_recipe(None, mixed), run)
    _, tok = load_model(run / "pretrain")
    text = [f"ROMEO:\nBut soft, what light through yonder window breaks, line {i}.\n" * 20 for i in range(20)]
    tokenize_documents(tok, text, run / "tokens", val_fraction=0.1, seed=1, progress=False)
    sft_stage(load_recipe(None, mixed), run)
    assert "50% of the rows are pretraining windows" in capsys.readouterr().out
    dpo_stage(load_recipe(None, mixed), run)
    metrics = [json.loads(line) for line in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["pretrain_nll"] > 0 for m in metrics if "rewards/margins" in m)
