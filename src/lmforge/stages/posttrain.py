"""The post-training stages: sft, dpo, reward, rl. Each runs the one Trainer with its objective.

Called by `lmforge run` and by the verbs `lmforge sft|dpo|reward|rl RECIPE`. Every stage has
the same skeleton (`PostTrainStage.run`): load the starting checkpoint -> prepare the data
(rank 0 first under torchrun) -> measure the start -> fit -> finish; a stage fills in its data,
its objective and loader, and (the reward model) its finish. Each starts from
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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


def finish(recipe: Recipe, stage: str, run_dir: Path, before: dict | None, model, tok, tasks, result: dict) -> dict:
    from lmforge.checkpoint.consolidated import list_checkpoints

    final = list_checkpoints(run_dir / stage / "checkpoints")
    summary: dict = {"train": result, "checkpoint": str(final[-1][1]) if final else None, "demo_key": demo_key(recipe)}
    if tasks is not None:
        after = measure(f"after {stage}", model, tok, tasks)
        summary.update(before=before, after=after)
    atomic_write_json(run_dir / stage / "demo_eval.json", summary)
    return summary


@dataclass
class StageData:
    tasks: Any  # the demo tasks, or None when the section names data files
    items: Any  # what the loader serves: SFT examples, tokenized pairs, RL prompts
    extra: Any = None  # stage-specific: held-out pairs (reward), the reward function (rl)


class PostTrainStage:
    """One post-training stage: load -> data -> measure -> fit -> finish (see `run`)."""

    name: ClassVar[str]
    measures_demo: ClassVar[bool] = True  # print / save the demo metrics before and after

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.section = getattr(recipe, self.name)

    def run(self) -> dict:
        import torch

        from lmforge.distributed import main_process_first, setup_distributed
        from lmforge.train.trainer import Trainer

        recipe = self.recipe
        model, tok, cfg, start = load_start(self.name, self.section.train, self.run_dir)
        with main_process_first(cfg.device):
            data = self.data(model, tok, cfg)
        before = None
        if self.measures_demo:
            before = measure_start(self.name, start, recipe, model, tok, data.tasks)
        ctx = setup_distributed(recipe.parallel, cfg.device)
        objective, loader = self.build(model, tok, cfg, data, ctx)
        torch.manual_seed(recipe.seed)
        trainer = Trainer(
            model, objective, loader, cfg, self.run_dir / self.name, tokenizer=tok, seed=recipe.seed,
            stage=self.name, parallel_cfg=recipe.parallel, run_name=recipe.name,
        )
        result = trainer.fit()
        return self.finish(trainer.raw_model, tok, data, before, result)

    def data(self, model, tok, cfg) -> StageData:
        """Read or build the stage's data (runs on rank 0 first under torchrun)."""
        raise NotImplementedError

    def build(self, model, tok, cfg, data: StageData, ctx) -> tuple[Any, Any]:
        """(objective, loader) for the Trainer."""
        raise NotImplementedError

    def finish(self, model, tok, data: StageData, before: dict | None, result: dict) -> dict:
        """Measure the trained model and write RUN_DIR/<stage>/demo_eval.json."""
        return finish(self.recipe, self.name, self.run_dir, before, model, tok, data.tasks, result)

    @staticmethod
    def pad_id(tok) -> int:
        return tok.special_ids.get("<|eos|>", 0)


# ---------------------------------------------------------------------------- SFT


class SFTStage(PostTrainStage):
    name = "sft"

    def data(self, model, tok, cfg) -> StageData:
        from lmforge.model.loss import IGNORE_INDEX
        from lmforge.posttrain.sft_data import sft_examples
        from lmforge.tasks.chat_data import load_conversations

        sec = self.section
        tasks = demo_tasks(self.recipe) if not sec.data else None
        conversations = tasks.sft if tasks is not None else load_conversations(sec.data)
        examples = sft_examples(conversations, tok, sec.max_len or cfg.seq_len)
        if not examples:
            raise LmforgeError("sft: no conversation has an assistant token to learn from")
        supervised = sum(sum(t != IGNORE_INDEX for t in e.labels) for e in examples)
        packing = "on" if sec.packing else "off"
        say(f"sft: {len(examples)} conversations, {supervised} supervised tokens, packing {packing}")
        return StageData(tasks, examples)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.posttrain.sft_data import SFTLoader
        from lmforge.train.objectives import CausalLMObjective

        loader = SFTLoader(
            data.items, cfg.micro_batch, cfg.seq_len, self.recipe.seed, self.pad_id(tok),
            self.section.packing, ctx.dp_rank, ctx.dp_size,
        )
        return CausalLMObjective(), loader


# ---------------------------------------------------------------------------- DPO and reward


def preference_data(recipe: Recipe, data: list[str], tok, seq_len: int):
    from lmforge.posttrain.preference import tokenize_pair
    from lmforge.tasks.chat_data import load_preferences

    tasks = demo_tasks(recipe) if not data else None
    pairs = tasks.preference_train if tasks is not None else load_preferences(data)
    if not pairs:
        raise LmforgeError("no preference pairs")
    return [tokenize_pair(p, tok, seq_len) for p in pairs], tasks


class DPOStage(PostTrainStage):
    name = "dpo"

    def data(self, model, tok, cfg) -> StageData:
        pairs, tasks = preference_data(self.recipe, self.section.data, tok, cfg.seq_len)
        return StageData(tasks, pairs)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.posttrain.dpo import DPOObjective
        from lmforge.posttrain.preference import PreferenceLoader, precompute_logps

        sec, pairs = self.section, data.items
        ref_model, ref_logps = None, None
        if sec.precompute_ref:
            t0 = time.time()
            ref_logps = precompute_logps(model, pairs, self.pad_id(tok))
            say(f"dpo: reference log-probs of {len(pairs)} pairs precomputed in {time.time() - t0:.1f}s")
        else:
            ref_model = copy.deepcopy(model).to(ctx.device)
        say(
            f"dpo: {len(pairs)} pairs, beta {sec.beta}, loss {sec.loss}, "
            f"label smoothing {sec.label_smoothing}, rpo_alpha {sec.rpo_alpha}"
        )
        loader = PreferenceLoader(
            pairs, cfg.micro_batch, self.recipe.seed, self.pad_id(tok), ref_logps, ctx.dp_rank, ctx.dp_size,
        )
        return DPOObjective(sec.beta, sec.loss, sec.label_smoothing, ref_model, sec.rpo_alpha), loader


class RewardStage(PostTrainStage):
    """The reward model: reports its held-out pair accuracy instead of the demo metrics."""

    name = "reward"
    measures_demo = False

    def data(self, model, tok, cfg) -> StageData:
        from lmforge.posttrain.preference import tokenize_pair

        pairs, tasks = preference_data(self.recipe, self.section.data, tok, cfg.seq_len)
        held_out = None
        if tasks is not None:
            held_out = [tokenize_pair(p, tok, cfg.seq_len) for p in tasks.preference_eval]
        return StageData(tasks, pairs, held_out)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.checkpoint.manager import resumable_checkpoints
        from lmforge.posttrain.preference import PreferenceLoader
        from lmforge.posttrain.reward import RewardObjective, attach_value_head, join_value_head

        self.head = attach_value_head(model)
        resumable = resumable_checkpoints(self.run_dir / self.name / "checkpoints")
        if resumable and cfg.resume != "never":  # the Trainer resumes from it: the head back into its weights
            join_value_head(resumable[-1][1])
        loader = PreferenceLoader(
            data.items, cfg.micro_batch, self.recipe.seed, self.pad_id(tok), None, ctx.dp_rank, ctx.dp_size,
        )
        return RewardObjective(self.head, self.section.center_rewards), loader

    def finish(self, model, tok, data: StageData, before: dict | None, result: dict) -> dict:
        from lmforge.posttrain.reward import pair_accuracy, split_value_heads

        split_value_heads(self.run_dir / self.name / "checkpoints")
        summary: dict = {"train": result}
        if data.extra:
            acc = pair_accuracy(model, self.head, data.extra, self.pad_id(tok))
            pairs = len(data.extra)
            say(f"reward model: held-out pair accuracy {100 * acc:.1f}% ({pairs} pairs, chance 50%)")
            summary["held_out_accuracy"] = acc
        atomic_write_json(self.run_dir / self.name / "demo_eval.json", summary)
        return summary


# ---------------------------------------------------------------------------- RL (GRPO)


class RLStage(PostTrainStage):
    name = "rl"

    def data(self, model, tok, cfg) -> StageData:
        from lmforge.posttrain.grpo import RewardModelScorer, load_reward_function
        from lmforge.tasks.chat_data import load_prompts

        sec = self.section
        tasks = demo_tasks(self.recipe) if not sec.data else None
        prompts = tasks.rl_prompts if tasks is not None else load_prompts(sec.data)
        if sec.reward == "model":
            from lmforge.posttrain.reward import load_reward_model

            rm, head, rm_tok = load_reward_model(sec.reward_model or self.run_dir / "reward")
            if rm_tok.hash != tok.hash:
                raise LmforgeError("rl: the reward model was trained with another tokenizer than the policy")
            reward_fn = RewardModelScorer(rm, head, self.pad_id(tok))
        else:
            reward_fn = load_reward_function(sec.reward)
        return StageData(tasks, prompts, reward_fn)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.inference import SamplingParams
        from lmforge.posttrain.grpo import GRPOObjective, RolloutLoader
        from lmforge.train.trainer import grad_accum_steps

        sec, prompts = self.section, data.items
        ref_model = copy.deepcopy(model) if sec.beta > 0 else None
        sampling = SamplingParams(
            max_new_tokens=sec.max_new_tokens, temperature=sec.temperature, top_p=sec.top_p,
            seed=self.recipe.seed,
        )
        loader = RolloutLoader(
            model, tok, prompts, data.extra, sec.num_generations, sec.prompts_per_step, sampling,
            self.recipe.seed, ref_model, sec.scale_rewards, sec.num_iterations, grad_accum_steps(cfg),
        )
        say(
            f"rl: GRPO, {len(prompts)} prompts, {sec.prompts_per_step} x {sec.num_generations} completions "
            f"per rollout, {sec.num_iterations} optimizer step(s) per rollout"
        )
        return GRPOObjective(sec.epsilon, sec.beta), loader


def sft_stage(recipe: Recipe, run_dir: Path) -> dict:
    return SFTStage(recipe, run_dir).run()


def dpo_stage(recipe: Recipe, run_dir: Path) -> dict:
    return DPOStage(recipe, run_dir).run()


def reward_stage(recipe: Recipe, run_dir: Path) -> dict:
    return RewardStage(recipe, run_dir).run()


def rl_stage(recipe: Recipe, run_dir: Path) -> dict:
    return RLStage(recipe, run_dir).run()
