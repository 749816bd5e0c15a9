"""GRPO (group relative policy optimization) as an objective of the one Trainer.

The rollout loader is the data source: each `next()` (one micro-batch) takes `prompts_per_step`
prompts, samples
`num_generations` completions of each with the current policy (lmforge.inference.Engine),
scores them with the reward (a Python function "module:function" or the reward model) and
turns each group's rewards into advantages A = (r − mean) / (std + 1e-4) (Bessel std, as TRL;
`scale_rewards: none` keeps r − mean; NaN → 0). The objective's per-token loss is
  −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·k3,   k3 = exp(ref − logp) − (ref − logp) − 1,
summed over completion tokens; the Trainer divides by the completion tokens of the whole
accumulated batch (TRL's "dapo" aggregation). With `num_iterations` μ = 1 (the default) there is
one policy update per rollout and ρ = exp(logp − logp.detach()) is 1 in value and carries the
gradient. With μ > 1 (TRL's num_iterations) the loader samples one optimizer step's rollouts
(`rollouts_per_step`, the Trainer's micro-batches per step), records the sampling policy's
log-probs as `old_logps`, and serves the same rollouts for μ optimizer steps: from the second
step on ρ ≠ 1 and the clip bounds how far the policy moves from the one that sampled.

Under data parallelism each rank samples its own prompts: one optimizer step takes
prompts_per_step x accumulation x dp_size prompts in all, and rank r's i-th rollout is rollout
i x dp_size + r of the one prompt stream (its prompts and its sampling seeds), so at an equal
global batch (train.batch_tokens) 1 and N ranks sample the same rollouts and take the same steps.
DDP samples with the policy itself, FSDP with a plain copy of its gathered weights (`_engine`).

Reward functions are called as f(prompts, completions, **columns) -> list[float], with prompts
and completions as text, `prompt_ids`/`completion_ids` as token lists, and every extra column
of the prompt data (e.g. "answer") as a list aligned with the completions (TRL's convention).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX, token_nll
from lmforge.posttrain.preference import completion_row, pad_rows
from lmforge.posttrain.sampler import EpochSampler, shuffled
from lmforge.train.objectives import LossOutput, Objective

STAT_PREFIX = "stat/"


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Group-relative advantages for rewards laid out group by group: [N] -> [N]."""
    r = rewards.float().view(-1, group_size)
    centered = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        centered = centered / (std + 1e-4)
    return torch.nan_to_num(centered, nan=0.0).view(-1)


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses [N, T], the clipped indicator [N, T] and k3 [N, T] (zeros without a reference)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv
    losses = -torch.min(unclipped, clipped)
    is_clipped = (clipped < unclipped).float()
    kl = torch.zeros_like(logps)
    if beta and ref_logps is not None:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        losses = losses + beta * kl
    return losses, is_clipped, kl


class GRPOObjective(Objective):
    """The clipped surrogate (+ k3 KL) per completion token; the batch carries the advantages."""

    def __init__(self, epsilon: float = 0.2, beta: float = 0.0):
        self.epsilon, self.beta = epsilon, beta

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        labels = batch["labels"]
        active = (labels != IGNORE_INDEX).float()
        logps = -token_nll(model(batch["input_ids"]), labels)
        old = batch.get("old_logps", logps.detach())
        losses, clipped, kl = grpo_token_losses(
            logps, old, batch["advantages"].float(), self.epsilon, self.beta, batch.get("ref_logps")
        )
        n = active.sum()
        metrics = {k[len(STAT_PREFIX) :]: v for k, v in batch.items() if k.startswith(STAT_PREFIX)}
        metrics["clip_ratio"] = (clipped * active).sum() / n.clamp(min=1)
        if self.beta:
            metrics["kl"] = (kl.detach() * active).sum() / n.clamp(min=1)
        return LossOutput((losses * active).sum(), n, metrics)


def load_reward_function(target: str) -> Callable:
    """ "package.module:function" -> the function."""
    if ":" not in target:
        raise LmforgeError(f"rl.reward {target!r}: expected 'model' or 'package.module:function'")
    module_name, func_name = target.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise LmforgeError(f"rl.reward {target!r}: cannot import it ({e})") from None
    if not callable(func):
        raise LmforgeError(f"rl.reward {target!r} is not callable")
    return func


class RewardModelScorer:
    """A reward function backed by a reward model: scores prompt + completion token ids."""

    def __init__(self, model, head, pad_id: int):
        self.model, self.head, self.pad_id = model, head, pad_id

    @torch.no_grad()
    def __call__(self, prompts, completions, prompt_ids, completion_ids, **_) -> list[float]:
        from lmforge.posttrain.reward import REWARD_ROOM, sequence_rewards

        max_len = self.model.cfg.max_seq_len - REWARD_ROOM
        rows = [
            completion_row(list(p), list(c) or [self.pad_id], max_len)
            for p, c in zip(prompt_ids, completion_ids)
        ]
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in pad_rows(rows, self.pad_id).items()}
        self.model.eval()
        return sequence_rewards(self.model, self.head, batch).cpu().tolist()


@torch.no_grad()
def _token_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token log-probs [N, T] of the batch's labels under `model` (0 where unlabelled), on the CPU."""
    device = next(model.parameters()).device
    logits = model(batch["input_ids"].to(device))
    return (-token_nll(logits, batch["labels"].to(device))).cpu()


class RolloutLoader:
    """Trainer loader protocol; each batch is freshly sampled from `policy` (see module docstring)."""

    def __init__(
        self,
        policy,
        tokenizer,
        prompts: list[dict],
        reward_fn: Callable,
        num_generations: int,
        prompts_per_step: int,
        sampling,  # lmforge.inference.SamplingParams (seed set: each rollout offsets it)
        seed: int,
        ref_model=None,
        scale_rewards: str = "group",
        num_iterations: int = 1,
        rollouts_per_step: int = 1,
        dp_rank: int = 0,
        dp_size: int = 1,
    ):
        from lmforge.inference import Engine

        if not prompts:
            raise LmforgeError("rl: no prompts")
        if num_iterations < 1 or rollouts_per_step < 1:
            raise ValueError("num_iterations and rollouts_per_step must be >= 1")
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.policy, self.tok, self.prompts, self.reward_fn = policy, tokenizer, prompts, reward_fn
        self.G, self.P, self.sampling, self.seed = num_generations, prompts_per_step, sampling, seed
        self.ref_model, self.scale = ref_model, scale_rewards
        self.num_iterations, self.rollouts_per_step = num_iterations, rollouts_per_step
        self.sharded = any(isinstance(p, DTensor) for p in policy.parameters())
        self.engine = None if self.sharded else Engine(policy, tokenizer)
        self.prompt_order = EpochSampler(lambda epoch: shuffled(len(prompts), seed, "rl", epoch))
        self.rollouts = 0
        self._buffer: list[dict[str, torch.Tensor]] = []  # this step's rollouts, served num_iterations times
        self._served = 0
        self._forwarded = False

    def next(self) -> dict[str, torch.Tensor]:
        if self.num_iterations == 1:
            return self._rollout()
        if self._served == len(self._buffer) * self.num_iterations:
            self._buffer = [self._rollout() for _ in range(self.rollouts_per_step)]
            self._served = 0
        batch = self._buffer[self._served % len(self._buffer)]
        self._served += 1
        return dict(batch)

    def _rollout(self) -> dict[str, torch.Tensor]:
        # every rank walks the same prompt order; the ranks' rollouts number k = rollouts x dp + rank,
        # and rollout k takes the k-th P prompts and seeds, as one rank's k-th rollout does
        order = self.prompt_order.take(self.P * self.dp_size)[self.dp_rank * self.P :][: self.P]
        items = [self.prompts[i] for i in order]
        k = self.rollouts * self.dp_size + self.dp_rank
        self.rollouts += 1
        flat_prompts, completions, rewards = self._sample(items, 1_000_003 * k)
        end = self.tok.special_ids["<|end|>"]
        comp_ids = [c.token_ids for c in completions]
        max_len = self.policy.cfg.max_seq_len
        rows = [completion_row(p, c or [end], max_len) for p, c in zip(flat_prompts, comp_ids)]
        batch = pad_rows(rows, self.tok.special_ids.get("<|eos|>", 0))
        batch["advantages"] = group_advantages(rewards, self.G, self.scale)
        if self.ref_model is not None:
            batch["ref_logps"] = _token_logps(self.ref_model, batch)
        if self.num_iterations > 1:
            batch["old_logps"] = _token_logps(self.policy, batch)
        std = rewards.view(-1, self.G).std(dim=1) if self.G > 1 else torch.zeros(len(items))
        batch[STAT_PREFIX + "reward"] = rewards.mean()
        batch[STAT_PREFIX + "reward_std"] = std.mean()
        batch[STAT_PREFIX + "frac_reward_zero_std"] = (std == 0).float().mean()
        mean_length = sum(map(len, comp_ids)) / len(comp_ids)
        batch[STAT_PREFIX + "completion_length"] = torch.tensor(float(mean_length))
        return batch

    def _sample(self, items: list[dict], seed_offset: int) -> tuple[list[list[int]], list, torch.Tensor]:
        """(prompt ids, completions, rewards): G completions of each item (in order), sampled with
        the rollouts' settings at seed + `seed_offset` and stopped at <|end|>, and their rewards."""
        import dataclasses

        end = self.tok.special_ids["<|end|>"]
        params = dataclasses.replace(
            self.sampling,
            seed=(self.sampling.seed or 0) + seed_offset,
            stop_token_ids=sorted({*self.sampling.stop_token_ids, end}),
        )
        prompt_ids = [self.tok.render_chat(it["messages"], add_generation_prompt=True)[0] for it in items]
        if not self._forwarded:  # see _first_forward
            self._first_forward(prompt_ids[0])
        flat_prompts = [p for p in prompt_ids for _ in range(self.G)]
        completions = self._engine().generate(flat_prompts, params)
        return flat_prompts, completions, self._score(items, flat_prompts, completions)

    def _score(self, items: list[dict], flat_prompts: list[list[int]], completions) -> torch.Tensor:
        """The reward of each completion (G per item, in order), checked for shape."""
        columns = {k: [it.get(k) for it in items for _ in range(self.G)] for k in items[0] if k != "messages"}
        rewards = torch.tensor(
            self.reward_fn(
                [self.tok.decode(p) for p in flat_prompts],
                [c.text for c in completions],
                prompt_ids=flat_prompts,
                completion_ids=[c.token_ids for c in completions],
                **columns,
            ),
            dtype=torch.float32,
        )
        if rewards.shape != (len(completions),):
            raise LmforgeError(
                f"the reward function returned {tuple(rewards.shape)} values "
                f"for {len(completions)} completions"
            )
        return rewards

    def held_out_reward(self, items: list[dict]) -> float:
        """The current policy's mean reward over G sampled completions of each held-out prompt in
        `items`, with the rollouts' sampling settings and a seed of its own that does not change
        between calls: measured before and after training, it compares one policy with another on
        the same prompts and the same random draws, which the training rollouts' reward (new
        prompts every step) cannot. Every rank samples all of `items` (under FSDP the weights are
        gathered, a collective), so each returns the same value."""
        return float(self._sample(items, 7_919)[2].mean())

    def _engine(self):
        """The engine that samples this rollout. The engine calls the model's parts directly, outside
        its forward, which a policy held as DTensor shards (FSDP2) cannot serve: then every rank
        gathers the policy's full weights (a collective, at the same point of every rank's rollout)
        into a plain copy that samples this rollout and is freed after it, as TRL gathers the
        weights for generation. Sampling itself is then local, so ranks whose completions end at
        different lengths never wait on each other."""
        from lmforge.inference import Engine

        if not self.sharded:
            return self.engine
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from lmforge.model.transformer import Transformer, rope_inv_freq

        full = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True))
        cfg = self.policy.cfg
        with torch.device("meta"):
            plain = Transformer(cfg)
        missing, unexpected = plain.load_state_dict(full, assign=True, strict=False)
        if missing or unexpected:
            raise LmforgeError(
                f"rl: a sharded policy samples from a plain Transformer copy, which does not match its "
                f"weights (missing {missing[:3]}, unexpected {unexpected[:3]}): use parallel.dp_replicate"
            )
        if plain.inv_freq is not None:  # not in the state dict
            plain.inv_freq = rope_inv_freq(cfg).to(next(iter(full.values())).device)
        return Engine(plain.eval(), self.tok)

    def _first_forward(self, ids: list[int]) -> None:
        """One forward outside inference mode before the engine's first: data parallelism (DDP's
        composable `replicate`) sets up its gradient buckets on the model's first forward, and
        buckets made under the engine's inference mode could not take gradients later."""
        with torch.no_grad():
            device = next(self.policy.parameters()).device
            self.policy(torch.tensor([ids[: self.policy.cfg.max_seq_len]], device=device))
        self._forwarded = True

    def state_dict(self) -> dict:
        """Where the prompts and sampling seeds are; a resumed run starts with a fresh rollout."""
        return {**self.prompt_order.state_dict(), "rollouts": self.rollouts}

    def load_state_dict(self, state: dict) -> None:
        self.prompt_order.load_state_dict(state)
        self.rollouts = int(state["rollouts"])
