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

import dataclasses
import time
from collections.abc import Sequence
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


def build_from(
    ckpt: Path,
    recipe: Recipe,
    ctx,
    train_cfg=None,
    sharded_logits: bool = False,
    extend=None,
    lora=None,
    where: str = "lora",
):
    """(model, tokenizer) from a checkpoint through the one builder: on the meta device, the recipe's
    parallel plan applied, then each rank's shards read from the checkpoint. `train_cfg`: the plan
    of the model being trained (activation checkpointing); None for a frozen reference. `lora`: the
    section's LoRAConfig (its recipe key: `where`); with a rank, adapters on a frozen model
    (lmforge.posttrain.lora)."""
    from lmforge.checkpoint.consolidated import read_checkpoint_model
    from lmforge.distributed import build_parallel_model, uses_loss_parallel

    ckpt, model_cfg, tok = read_checkpoint_model(ckpt)
    plan = {
        "activation_checkpointing": train_cfg is not None and train_cfg.activation_checkpointing,
        "loss_parallel": uses_loss_parallel(recipe.parallel, ctx, sharded_logits),
    }
    if lora is not None and lora.rank > 0:
        from lmforge.posttrain.lora import build_lora_model, describe

        model = build_lora_model(
            ckpt, model_cfg, lora, recipe.parallel, ctx, seed=recipe.seed, extend=extend, where=where, **plan
        )
        say(describe(model))
        return model, tok
    model = build_parallel_model(
        model_cfg,
        recipe.parallel,
        ctx,
        seed=recipe.seed,
        init_from=ckpt,
        extend=extend,
        **plan,
    )
    return model, tok


def load_start(
    stage: str, train_cfg, run_dir: Path, recipe: Recipe, ctx, sharded_logits: bool, extend=None, lora=None
):
    ckpt = start_checkpoint(stage, train_cfg.init_from, run_dir)
    say(f"{stage}: starting from {ckpt}")
    model, tok = build_from(ckpt, recipe, ctx, train_cfg, sharded_logits, extend, lora, f"{stage}.lora")
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
        if (
            data.get("checkpoint") == str(ckpt)
            and data.get("demo_key") == demo_key(recipe)
            and "after" in data
        ):
            from lmforge.tasks.demo_eval import format_metrics

            print(
                format_metrics(
                    f"before {stage}", data["after"], len(tasks.mc_eval), len(tasks.preference_eval)
                ),
                flush=True,
            )
            return data["after"]
    return measure(f"before {stage}", model, tok, tasks)


def finish(
    recipe: Recipe, stage: str, run_dir: Path, before: dict | None, model, tok, tasks, result: dict
) -> dict:
    from lmforge.checkpoint.consolidated import list_checkpoints

    final = list_checkpoints(run_dir / stage / "checkpoints")
    summary: dict = {
        "train": result,
        "checkpoint": str(final[-1][1]) if final else None,
        "demo_key": demo_key(recipe),
    }
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
    sharded_logits: ClassVar[bool] = False  # the objective's takes_sharded_logits (loss parallelism)

    def __init__(self, recipe: Recipe, run_dir: Path, data_key: str = ""):
        """`data_key`: what the recipe feeds this stage (lmforge.run.data_key); the trainer's resume
        check holds it and the starting weights' hash, so new data or a new start trains from scratch."""
        self.recipe, self.run_dir, self.data_key = recipe, Path(run_dir), data_key
        self.section = getattr(recipe, self.name)
        self.inputs: dict[str, str] = {}  # hashes of other models the stage trains against (resume check)

    def run(self) -> dict:
        import torch

        from lmforge.checkpoint.adapters import weights_hash
        from lmforge.config import config_hash
        from lmforge.distributed import main_process_first, setup_distributed
        from lmforge.train.trainer import Trainer

        recipe = self.recipe
        ctx = setup_distributed(recipe.parallel, self.section.train.device)
        model, tok, cfg, start = load_start(
            self.name,
            self.section.train,
            self.run_dir,
            recipe,
            ctx,
            self.sharded_logits,
            self.extend_model,
            getattr(self.section, "lora", None),
        )
        self.start, self.ctx = start, ctx
        with main_process_first(cfg.device):
            data = self.data(model, tok, cfg)
        before = None
        if self.measures_demo:
            scored = self.scored_model(model, start) if data.tasks is not None else model
            before = measure_start(self.name, start, recipe, scored, tok, data.tasks)
        objective, loader = self.build(model, tok, cfg, data, ctx)
        torch.manual_seed(recipe.seed)
        trainer = Trainer(
            model,
            objective,
            loader,
            cfg,
            self.run_dir / self.name,
            tokenizer=tok,
            seed=recipe.seed,
            ctx=ctx,
            stage=self.name,
            parallel_cfg=recipe.parallel,
            run_name=recipe.name,
            parallelized=True,
            data_key=config_hash({"run": self.data_key, "start": weights_hash(start), **self.inputs}),
        )
        result = trainer.fit()
        trained = trainer.raw_model
        if self.measures_demo and data.tasks is not None and ctx.distributed:
            from lmforge.checkpoint.consolidated import list_checkpoints
            from lmforge.distributed import barrier

            barrier(ctx)  # rank 0 publishes the final checkpoint
            final = list_checkpoints(self.run_dir / self.name / "checkpoints")[-1][1]
            trained = self.scored_model(trained, final)
        return self.finish(trained, tok, data, before, result)

    def extend_model(self, model) -> None:
        """Add modules trained with the model (on the meta device, before the parallel plan)."""

    def scored_model(self, model, ckpt: Path):
        """The model the demo metrics score: under torchrun a plain copy of `ckpt` on each rank (the
        metrics call the model's parts directly, outside the sharded forward; the demo tasks exist
        for the small models of the embedded plays), else `model` itself."""
        if not self.ctx.distributed:
            return model
        from lmforge.checkpoint.consolidated import load_model

        return load_model(ckpt, self.ctx.device)[0]

    def reference_model(self):
        """A frozen copy of the starting checkpoint, built and sharded like the policy."""
        return build_from(self.start, self.recipe, self.ctx)[0]

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

    def pretrain_windows(self, tok, cfg, ctx):
        """Pretraining windows of the run's token shards, for the stages that mix them in."""
        from lmforge.posttrain.mixing import PretrainWindows, pretrain_tokens

        tokens = pretrain_tokens(self.run_dir, tok)
        return PretrainWindows(tokens, cfg.seq_len, self.recipe.seed, ctx.dp_rank, ctx.dp_size)


# ---------------------------------------------------------------------------- SFT


class SFTStage(PostTrainStage):
    name = "sft"
    sharded_logits = True

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
            data.items,
            cfg.micro_batch,
            cfg.seq_len,
            self.recipe.seed,
            self.pad_id(tok),
            self.section.packing,
            ctx.dp_rank,
            ctx.dp_size,
        )
        fraction = self.section.mix_pretrain
        if fraction:
            from lmforge.posttrain.mixing import SFTMixLoader

            loader = SFTMixLoader(loader, self.pretrain_windows(tok, cfg, ctx), fraction, cfg.micro_batch)
            tokens = self.run_dir / "tokens"
            say(f"sft: {100 * fraction:.0f}% of the rows are pretraining windows from {tokens}")
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
            from lmforge.posttrain.dpo import parameter_bytes

            ref_model = self.reference_model()
            local, full = parameter_bytes(ref_model)
            say(f"dpo: frozen reference on rank {ctx.rank}: {local} of its {full} parameter bytes")
        say(
            f"dpo: {len(pairs)} pairs, beta {sec.beta}, loss {sec.loss}, "
            f"label smoothing {sec.label_smoothing}, rpo_alpha {sec.rpo_alpha}"
        )
        loader = PreferenceLoader(
            pairs,
            cfg.micro_batch,
            self.recipe.seed,
            self.pad_id(tok),
            ref_logps,
            ctx.dp_rank,
            ctx.dp_size,
        )
        if sec.mix_pretrain:
            from lmforge.posttrain.mixing import PreferenceMixLoader

            loader = PreferenceMixLoader(loader, self.pretrain_windows(tok, cfg, ctx), sec.mix_pretrain_rows)
            rows = sec.mix_pretrain_rows
            say(f"dpo: pretraining-NLL term, weight {sec.mix_pretrain}, {rows} windows per micro-batch")
        objective = DPOObjective(
            sec.beta,
            sec.loss,
            sec.label_smoothing,
            ref_model,
            sec.rpo_alpha,
            sec.mix_pretrain,
        )
        return objective, loader


class RewardStage(PostTrainStage):
    """The reward model: reports its held-out pair accuracy instead of the demo metrics."""

    name = "reward"
    measures_demo = False

    def extend_model(self, model) -> None:
        from lmforge.posttrain.reward import attach_value_head

        attach_value_head(model)

    def data(self, model, tok, cfg) -> StageData:
        from lmforge.posttrain.preference import tokenize_pair
        from lmforge.posttrain.reward import REWARD_ROOM

        # room for the final token, where sequence_rewards reads the reward
        max_len = cfg.seq_len - REWARD_ROOM
        pairs, tasks = preference_data(self.recipe, self.section.data, tok, max_len)
        held_out = None
        if tasks is not None:
            held_out = [tokenize_pair(p, tok, max_len) for p in tasks.preference_eval]
        return StageData(tasks, pairs, held_out)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.checkpoint.manager import resumable_checkpoints
        from lmforge.posttrain.preference import PreferenceLoader
        from lmforge.posttrain.reward import RewardObjective, join_value_head

        self.head = model.value_head
        resumable = resumable_checkpoints(self.run_dir / self.name / "checkpoints")
        if resumable and cfg.resume != "never":  # the Trainer resumes from it: the head back into its weights
            join_value_head(resumable[-1][1])
        loader = PreferenceLoader(
            data.items,
            cfg.micro_batch,
            self.recipe.seed,
            self.pad_id(tok),
            None,
            ctx.dp_rank,
            ctx.dp_size,
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
    held_out: Sequence[dict] = ()  # prompts of the held-out reward (set by data())

    def data(self, model, tok, cfg) -> StageData:
        from lmforge.posttrain.grpo import RewardModelScorer, load_reward_function
        from lmforge.tasks.chat_data import load_prompts

        sec = self.section
        tasks = demo_tasks(self.recipe) if not sec.data else None
        prompts = tasks.rl_prompts if tasks is not None else load_prompts(sec.data)
        if sec.reward == "model":
            from lmforge.checkpoint.adapters import weights_hash
            from lmforge.checkpoint.consolidated import resolve_checkpoint
            from lmforge.posttrain.reward import load_reward_model

            rm_ckpt = resolve_checkpoint(sec.reward_model or self.run_dir / "reward")
            self.inputs["reward_model"] = weights_hash(rm_ckpt)
            rm, head, rm_tok = load_reward_model(rm_ckpt)
            if rm_tok.hash != tok.hash:
                raise LmforgeError("rl: the reward model was trained with another tokenizer than the policy")
            reward_fn = RewardModelScorer(rm, head, self.pad_id(tok))
        else:
            reward_fn = load_reward_function(sec.reward)
        if sec.eval_data:
            held_out = load_prompts(sec.eval_data)
        elif tasks is not None:
            from lmforge.tasks.demo import reward_prompt

            held_out = [reward_prompt(m) for m in tasks.mc_eval]
        else:
            held_out = []
        self.held_out = held_out[: sec.eval_prompts]
        return StageData(tasks, prompts, reward_fn)

    def build(self, model, tok, cfg, data: StageData, ctx):
        from lmforge.inference import SamplingParams
        from lmforge.posttrain.grpo import GRPOObjective, RolloutLoader
        from lmforge.train.trainer import grad_accum_steps

        sec, prompts = self.section, data.items
        ref_model = self.reference_model() if sec.beta > 0 else None
        sampling = SamplingParams(
            max_new_tokens=sec.max_new_tokens,
            temperature=sec.temperature,
            top_p=sec.top_p,
            seed=self.recipe.seed,
        )
        loader = RolloutLoader(
            model,
            tok,
            prompts,
            data.extra,
            sec.num_generations,
            sec.prompts_per_step,
            sampling,
            self.recipe.seed,
            ref_model,
            sec.scale_rewards,
            sec.num_iterations,
            grad_accum_steps(cfg, ctx.dp_size),
            ctx.dp_rank,
            ctx.dp_size,
        )
        say(
            f"rl: GRPO, {len(prompts)} prompts, {sec.prompts_per_step} x {sec.num_generations} completions "
            f"per rollout, {sec.num_iterations} optimizer step(s) per rollout"
        )
        self.loader, self.reward_before = loader, None
        if self.held_out:
            self.reward_before = loader.held_out_reward(self.held_out)
            say(f"before rl: {self.held_out_label()} {self.reward_before:.3f}")
        return GRPOObjective(sec.epsilon, sec.beta), loader

    def held_out_label(self) -> str:
        n, g = len(self.held_out), self.section.num_generations
        return (
            f"mean reward of {n} held-out prompts x {g} sampled completions (the same seeds before and after)"
        )

    def finish(self, model, tok, data: StageData, before: dict | None, result: dict) -> dict:
        summary = super().finish(model, tok, data, before, result)
        rise = reward_rise(self.run_dir / self.name / "metrics.jsonl")
        if rise is not None:
            first, last = rise
            say(
                f"rl: mean reward {first:.3f} over the first quarter of the steps -> {last:.3f} over the last"
            )
            summary["reward_first_quarter"], summary["reward_last_quarter"] = first, last
        if self.reward_before is not None:
            after = self.loader.held_out_reward(self.held_out)
            say(f"after rl: {self.held_out_label()} {after:.3f} (before {self.reward_before:.3f})")
            summary["held_out_reward"] = {
                "before": self.reward_before,
                "after": after,
                "prompts": len(self.held_out),
            }
        atomic_write_json(self.run_dir / self.name / "demo_eval.json", summary)
        return summary


def reward_rise(metrics_file: Path) -> tuple[float, float] | None:
    """The mean rollout reward over the first and the last quarter of a GRPO run's steps."""
    import json

    if not metrics_file.exists():
        return None
    lines = metrics_file.read_text(encoding="utf-8").splitlines()
    rewards = [row["reward"] for row in map(json.loads, lines) if "reward" in row]
    if not rewards:
        return None
    q = max(1, len(rewards) // 4)
    return sum(rewards[:q]) / q, sum(rewards[-q:]) / q


def sft_stage(recipe: Recipe, run_dir: Path, data_key: str = "") -> dict:
    return SFTStage(recipe, run_dir, data_key).run()


def dpo_stage(recipe: Recipe, run_dir: Path, data_key: str = "") -> dict:
    return DPOStage(recipe, run_dir, data_key).run()


def reward_stage(recipe: Recipe, run_dir: Path, data_key: str = "") -> dict:
    return RewardStage(recipe, run_dir, data_key).run()


def rl_stage(recipe: Recipe, run_dir: Path, data_key: str = "") -> dict:
    return RLStage(recipe, run_dir, data_key).run()
