"""The post-training stages: sft, dpo, reward, rl. Each runs the one Trainer with its objective.

Called by `lmforge run` and by the verbs `lmforge sft|dpo|reward|rl RECIPE`. Each starts from
`<section>.train.init_from` or, when empty, the previous stage's latest checkpoint in the run
directory (sft <- pretrain; dpo, reward <- sft, else pretrain; rl <- dpo, else sft, else
pretrain) and writes RUN_DIR/<stage>/checkpoints/step_N. With no `data` files the demo tasks
of the plays are used, and the held-out demo metrics are printed before and after the stage
and written to RUN_DIR/<stage>/demo_eval.json.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json
from lmforge.recipe import Recipe

STARTS = {
    "sft": ("pretrain",),
    "dpo": ("sft", "pretrain"),
    "reward": ("sft", "pretrain"),
    "rl": ("dpo", "sft", "pretrain"),
}


def say(text: str) -> None:
    print(f"[lmforge] {text}", flush=True)


def start_checkpoint(stage: str, init_from: str, run_dir: Path) -> Path:
    from lmforge.checkpoint.consolidated import list_checkpoints, resolve_checkpoint

    if init_from:
        return resolve_checkpoint(init_from)
    for previous in STARTS[stage]:
        found = list_checkpoints(run_dir / previous / "checkpoints")
        if found:
            return found[-1][1]
    wanted = " or ".join(f"{run_dir / s}" for s in STARTS[stage])
    raise LmforgeError(
        f"{stage}: no checkpoint to start from in {wanted}; run the earlier stages first "
        f"or set {stage}.train.init_from to a checkpoint"
    )


def load_start(stage: str, train_cfg, run_dir: Path):
    from lmforge.checkpoint.consolidated import load_model

    ckpt = start_checkpoint(stage, train_cfg.init_from, run_dir)
    say(f"{stage}: starting from {ckpt}")
    model, tok = load_model(ckpt)
    seq_len = min(train_cfg.seq_len, model.cfg.max_seq_len)
    return model, tok, dataclasses.replace(train_cfg, seq_len=seq_len), ckpt


def demo_tasks(recipe: Recipe):
    from lmforge.tasks.demo import build_demo_tasks

    t0 = time.time()
    tasks = build_demo_tasks(recipe.sft.demo, recipe.seed)
    say(
        f"demo tasks from the plays ({time.time() - t0:.1f}s): {len(tasks.sft)} SFT conversations, "
        f"{len(tasks.preference_train)} preference pairs; held out by scene: {len(tasks.mc_eval)} "
        f"4-choice questions, {len(tasks.preference_eval)} preference pairs"
    )
    return tasks


def demo_key(recipe: Recipe) -> str:
    from lmforge.config import config_hash

    return config_hash({"demo": recipe.sft.demo, "seed": recipe.seed})


def measure(label: str, model, tok, tasks) -> dict[str, float]:
    from lmforge.tasks.demo_eval import demo_metrics, format_metrics

    m = demo_metrics(model, tok, tasks.mc_eval, tasks.preference_eval)
    print(format_metrics(label, m, len(tasks.mc_eval), len(tasks.preference_eval)), flush=True)
    return m


def measure_start(stage: str, ckpt: Path, recipe: Recipe, model, tok, tasks) -> dict[str, float] | None:
    """The demo metrics of the starting checkpoint; reused from the stage that wrote it when that
    stage measured this very checkpoint on the same demo tasks (saves a second evaluation)."""
    from lmforge.fileio import read_json

    if tasks is None:
        return None
    saved = ckpt.parent.parent / "demo_eval.json"
    if saved.exists():
        data = read_json(saved)
        if data.get("checkpoint") == str(ckpt) and data.get("demo_key") == demo_key(recipe) and "after" in data:
            from lmforge.tasks.demo_eval import format_metrics

            print(format_metrics(f"before {stage}", data["after"], len(tasks.mc_eval), len(tasks.preference_eval)), flush=True)
            return data["after"]
    return measure(f"before {stage}", model, tok, tasks)


def make_trainer(recipe: Recipe, model, objective, loader, cfg, run_dir: Path, stage: str, tok):
    from lmforge.train.trainer import Trainer

    return Trainer(
        model, objective, loader, cfg, run_dir / stage, tokenizer=tok, seed=recipe.seed, stage=stage,
        parallel_cfg=recipe.parallel, run_name=recipe.name,
    )


def finish(recipe: Recipe, stage: str, run_dir: Path, before: dict | None, model, tok, tasks, result: dict) -> dict:
    from lmforge.checkpoint.consolidated import list_checkpoints

    final = list_checkpoints(run_dir / stage / "checkpoints")
    summary: dict = {"train": result, "checkpoint": str(final[-1][1]) if final else None, "demo_key": demo_key(recipe)}
    if tasks is not None:
        after = measure(f"after {stage}", model, tok, tasks)
        summary.update(before=before, after=after)
    atomic_write_json(run_dir / stage / "demo_eval.json", summary)
    return summary


# ---------------------------------------------------------------------------- SFT


def sft_stage(recipe: Recipe, run_dir: Path) -> dict:
    import torch

    from lmforge.distributed import main_process_first, setup_distributed
    from lmforge.posttrain.sft_data import SFTLoader, sft_examples
    from lmforge.tasks.chat_data import load_conversations
    from lmforge.train.objectives import CausalLMObjective

    run_dir = Path(run_dir)
    sec = recipe.sft
    model, tok, cfg, start = load_start("sft", sec.train, run_dir)
    with main_process_first(cfg.device):
        tasks = demo_tasks(recipe) if not sec.data else None
        conversations = tasks.sft if tasks is not None else load_conversations(sec.data)
        examples = sft_examples(conversations, tok, sec.max_len or cfg.seq_len)
    if not examples:
        raise LmforgeError("sft: no conversation has an assistant token to learn from")
    supervised = sum(sum(t != -100 for t in e.labels) for e in examples)
    say(f"sft: {len(examples)} conversations, {supervised} supervised tokens, packing {'on' if sec.packing else 'off'}")
    before = measure_start("sft", start, recipe, model, tok, tasks)
    pad = tok.special_ids.get("<|eos|>", 0)
    ctx = setup_distributed(recipe.parallel, cfg.device)
    loader = SFTLoader(examples, cfg.micro_batch, cfg.seq_len, recipe.seed, pad, sec.packing, ctx.dp_rank, ctx.dp_size)
    torch.manual_seed(recipe.seed)
    trainer = make_trainer(recipe, model, PackedCausalLM(CausalLMObjective()), loader, cfg, run_dir, "sft", tok)
    result = trainer.fit()
    return finish(recipe, "sft", run_dir, before, trainer.raw_model, tok, tasks, result)


class PackedCausalLM:
    """The causal-LM objective, with the packed rows' positions and block-diagonal mask passed to
    the model (CausalLMObjective calls `model(input_ids)`; this binds the extra arguments)."""

    def __init__(self, inner):
        self.inner = inner

    def loss(self, model, batch):
        extra = {k: batch[k] for k in ("positions", "attn_mask") if k in batch}
        return self.inner.loss(lambda ids: model(ids, **extra), batch)


# ---------------------------------------------------------------------------- DPO and reward


def preference_data(recipe: Recipe, data: list[str], tok, seq_len: int):
    from lmforge.posttrain.preference import tokenize_pair
    from lmforge.tasks.chat_data import load_preferences

    tasks = demo_tasks(recipe) if not data else None
    pairs = tasks.preference_train if tasks is not None else load_preferences(data)
    if not pairs:
        raise LmforgeError("no preference pairs")
    return [tokenize_pair(p, tok, seq_len) for p in pairs], tasks


def dpo_stage(recipe: Recipe, run_dir: Path) -> dict:
    import torch

    from lmforge.distributed import main_process_first, setup_distributed
    from lmforge.posttrain.dpo import DPOObjective
    from lmforge.posttrain.preference import PreferenceLoader, precompute_logps

    run_dir = Path(run_dir)
    sec = recipe.dpo
    model, tok, cfg, start = load_start("dpo", sec.train, run_dir)
    with main_process_first(cfg.device):
        pairs, tasks = preference_data(recipe, sec.data, tok, cfg.seq_len)
    before = measure_start("dpo", start, recipe, model, tok, tasks)
    pad = tok.special_ids.get("<|eos|>", 0)
    ctx = setup_distributed(recipe.parallel, cfg.device)
    ref_model, ref_logps = None, None
    if sec.precompute_ref:
        t0 = time.time()
        ref_logps = precompute_logps(model, pairs, pad)
        say(f"dpo: reference log-probs of {len(pairs)} pairs precomputed in {time.time() - t0:.1f}s")
    else:
        ref_model = copy.deepcopy(model)
    say(
        f"dpo: {len(pairs)} pairs, beta {sec.beta}, loss {sec.loss}, label smoothing {sec.label_smoothing}, "
        f"rpo_alpha {sec.rpo_alpha}"
    )
    loader = PreferenceLoader(pairs, cfg.micro_batch, recipe.seed, pad, ref_logps, ctx.dp_rank, ctx.dp_size)
    objective = DPOObjective(sec.beta, sec.loss, sec.label_smoothing, ref_model, sec.rpo_alpha)
    torch.manual_seed(recipe.seed)
    trainer = make_trainer(recipe, model, objective, loader, cfg, run_dir, "dpo", tok)
    if ref_model is not None:
        ref_model.to(trainer.device)
    result = trainer.fit()
    return finish(recipe, "dpo", run_dir, before, trainer.raw_model, tok, tasks, result)


def reward_stage(recipe: Recipe, run_dir: Path) -> dict:
    import torch

    from lmforge.checkpoint.consolidated import list_checkpoints
    from lmforge.distributed import main_process_first, setup_distributed
    from lmforge.posttrain.preference import PreferenceLoader
    from lmforge.posttrain.reward import (
        RewardObjective,
        attach_value_head,
        join_value_head,
        pair_accuracy,
        split_value_heads,
    )

    run_dir = Path(run_dir)
    sec = recipe.reward
    model, tok, cfg, start = load_start("reward", sec.train, run_dir)
    with main_process_first(cfg.device):
        pairs, tasks = preference_data(recipe, sec.data, tok, cfg.seq_len)
    held_out = None
    if tasks is not None:
        from lmforge.posttrain.preference import tokenize_pair

        held_out = [tokenize_pair(p, tok, cfg.seq_len) for p in tasks.preference_eval]
    pad = tok.special_ids.get("<|eos|>", 0)
    ctx = setup_distributed(recipe.parallel, cfg.device)
    head = attach_value_head(model)
    resumable = [d for _, d in list_checkpoints(run_dir / "reward" / "checkpoints") if (d / "state.json").exists()]
    if resumable and cfg.resume != "never":  # the Trainer resumes from it: the head goes back into its weights
        join_value_head(resumable[-1])
    loader = PreferenceLoader(pairs, cfg.micro_batch, recipe.seed, pad, None, ctx.dp_rank, ctx.dp_size)
    torch.manual_seed(recipe.seed)
    trainer = make_trainer(recipe, model, RewardObjective(head, sec.center_rewards), loader, cfg, run_dir, "reward", tok)
    result = trainer.fit()
    split_value_heads(run_dir / "reward" / "checkpoints")
    summary = {"train": result}
    if held_out:
        acc = pair_accuracy(trainer.raw_model, head, held_out, pad)
        say(f"reward model: held-out pair accuracy {100 * acc:.1f}% ({len(held_out)} pairs, chance 50%)")
        summary["held_out_accuracy"] = acc
    atomic_write_json(run_dir / "reward" / "demo_eval.json", summary)
    return summary


# ---------------------------------------------------------------------------- RL (GRPO)


def rl_stage(recipe: Recipe, run_dir: Path) -> dict:
    import torch

    from lmforge.distributed import main_process_first
    from lmforge.inference import SamplingParams
    from lmforge.posttrain.grpo import GRPOObjective, RewardModelScorer, RolloutLoader, load_reward_function
    from lmforge.tasks.chat_data import load_prompts
    from lmforge.train.trainer import grad_accum_steps

    run_dir = Path(run_dir)
    sec = recipe.rl
    model, tok, cfg, start = load_start("rl", sec.train, run_dir)
    with main_process_first(cfg.device):
        tasks = demo_tasks(recipe) if not sec.data else None
        prompts = tasks.rl_prompts if tasks is not None else load_prompts(sec.data)
    pad = tok.special_ids.get("<|eos|>", 0)
    if sec.reward == "model":
        from lmforge.posttrain.reward import load_reward_model

        rm, head, rm_tok = load_reward_model(sec.reward_model or run_dir / "reward")
        if rm_tok.hash != tok.hash:
            raise LmforgeError("rl: the reward model was trained with a different tokenizer than the policy")
        reward_fn = RewardModelScorer(rm, head, pad)
    else:
        reward_fn = load_reward_function(sec.reward)
    before = measure_start("rl", start, recipe, model, tok, tasks)
    ref_model = copy.deepcopy(model) if sec.beta > 0 else None
    sampling = SamplingParams(max_new_tokens=sec.max_new_tokens, temperature=sec.temperature, top_p=sec.top_p, seed=recipe.seed)
    loader = RolloutLoader(
        model, tok, prompts, reward_fn, sec.num_generations, sec.prompts_per_step, sampling, recipe.seed, ref_model,
        sec.scale_rewards, sec.num_iterations, grad_accum_steps(cfg),
    )
    say(
        f"rl: GRPO, {len(prompts)} prompts, {sec.prompts_per_step} x {sec.num_generations} completions per rollout, "
        f"{sec.num_iterations} optimizer step(s) per rollout"
    )
    torch.manual_seed(recipe.seed)
    trainer = make_trainer(recipe, model, GRPOObjective(sec.epsilon, sec.beta), loader, cfg, run_dir, "rl", tok)
    result = trainer.fit()
    return finish(recipe, "rl", run_dir, before, trainer.raw_model, tok, tasks, result)
