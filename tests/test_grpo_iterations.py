"""GRPO with several optimizer steps per rollout (rl.num_iterations, TRL's num_iterations)."""

from __future__ import annotations

import pytest
import torch

from lmforge.posttrain.grpo import GRPOObjective, RolloutLoader


@pytest.fixture(scope="module")
def policy():
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["abc abd abe " * 50], vocab_size=270, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=tok.vocab_size, max_seq_len=64)
    )
    return model, tok


def loader(policy, **kw) -> RolloutLoader:
    from lmforge.inference import SamplingParams

    model, tok = policy
    prompts = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]

    def reward(prompts, completions, completion_ids, **_):  # varies within each group: non-zero advantages
        return [float(i % 3) for i in range(len(completion_ids))]

    return RolloutLoader(
        model,
        tok,
        prompts,
        reward,
        num_generations=3,
        prompts_per_step=2,
        sampling=SamplingParams(max_new_tokens=5, seed=0),
        seed=0,
        **kw,
    )


def test_each_steps_rollouts_are_served_num_iterations_times(policy):
    it = loader(policy, num_iterations=2, rollouts_per_step=2)
    a, b, a2, b2, c = (it.next() for _ in range(5))
    assert torch.equal(a["input_ids"], a2["input_ids"]) and torch.equal(b["input_ids"], b2["input_ids"])
    assert torch.equal(a["old_logps"], a2["old_logps"]) and torch.equal(a["advantages"], a2["advantages"])
    assert it.rollouts == 4 and not torch.equal(
        a["input_ids"], c["input_ids"]
    )  # the 5th: a new step, new rollouts
    assert "old_logps" not in loader(policy).next()  # num_iterations 1: ratio taken from logp.detach()


def test_old_logps_are_the_sampling_policys_and_bound_the_ratio(policy):
    model, _ = policy
    batch = loader(policy, num_iterations=2).next()
    objective = GRPOObjective(epsilon=0.2)
    same = objective.loss(model, batch)
    plain = objective.loss(model, {k: v for k, v in batch.items() if k != "old_logps"})
    assert same.loss_sum.item() == pytest.approx(plain.loss_sum.item(), rel=1e-5)  # first use: ratio 1
    assert same.metrics["clip_ratio"].item() == 0.0
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    try:
        later = objective.loss(
            model, batch
        )  # the policy moved since sampling: ratio != 1, some tokens clipped
        assert later.metrics["clip_ratio"].item() > 0.0
    finally:
        model.load_state_dict(moved)
