"""GRPO: group-relative advantages (TRL's definition), the clipped per-token loss, k3 KL, rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.posttrain.grpo import (
    GRPOObjective,
    RolloutLoader,
    group_advantages,
    grpo_token_losses,
    load_reward_function,
)


def test_advantages_match_the_reference_check():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    std = math.sqrt(1 / 3)  # Bessel-corrected std of [1, 0, 0, 1] = 0.5774
    assert std == pytest.approx(0.5774, abs=1e-4)
    k = 0.5 / (std + 1e-4)
    assert a.tolist() == pytest.approx([k, -k, -k, k])
    assert abs(a[0].item()) == pytest.approx(0.866, abs=1e-3)


def test_advantages_per_group_zero_std_and_no_scaling():
    r = torch.tensor([2.0, 2.0, 0.0, 3.0])
    a = group_advantages(r, group_size=2)
    assert a[:2].tolist() == [0.0, 0.0]  # a group with identical rewards teaches nothing
    assert a[2].item() < 0 < a[3].item()
    assert group_advantages(r, 2, scale="none").tolist() == [0.0, 0.0, -1.5, 1.5]


def test_clipped_surrogate():
    A = torch.tensor([1.0, -1.0, 1.0])
    old = torch.zeros(3, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.0]]))
    losses, clipped, kl = grpo_token_losses(logp, old, A, epsilon=0.2)
    # ratio 1.5, A>0: clipped to 1.2; ratio 0.5, A<0: -min(-0.5, -0.8) = 0.8; ratio 1: -A
    assert losses.squeeze(1).tolist() == pytest.approx([-1.2, 0.8, -1.0])
    assert clipped.squeeze(1).tolist() == [1.0, 1.0, 0.0]
    assert torch.all(kl == 0)


def test_k3_kl_term():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.5]])
    losses, _, kl = grpo_token_losses(logp, logp.detach(), torch.zeros(1), beta=0.1, ref_logps=ref)
    d = 0.5
    assert kl.tolist()[0] == pytest.approx([0.0, math.exp(d) - d - 1])
    assert losses.tolist()[0] == pytest.approx([0.0, 0.1 * (math.exp(d) - d - 1)])


class Bigram(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, ids):
        return self.table[ids]


def test_objective_gradient_is_the_policy_gradient():
    """With ratio 1, d(loss)/d(logp) = -A per token: the gradient raises good completions' tokens."""
    model = Bigram(5)
    batch = {
        "input_ids": torch.tensor([[1, 2], [1, 2]]),
        "labels": torch.tensor([[-100, 3], [-100, 4]]),
        "advantages": torch.tensor([1.0, -1.0]),
    }
    out = GRPOObjective().loss(model, batch)
    assert out.count.item() == 2 and out.loss_sum.item() == pytest.approx(0.0, abs=1e-6)
    out.loss_sum.backward()
    g = model.table.grad[2]
    assert g[3] < 0 < g[4]  # descending the loss raises token 3 (A=+1) and lowers token 4 (A=-1)


def test_load_reward_function_errors():
    from lmforge.errors import LmforgeError

    assert load_reward_function("lmforge.tasks.demo:play_title_reward")
    with pytest.raises(LmforgeError, match="expected 'model' or"):
        load_reward_function("nocolon")
    with pytest.raises(LmforgeError, match="cannot import"):
        load_reward_function("lmforge.tasks.demo:nope")


def test_rollout_loader_groups_and_rewards():
    from lmforge.inference import SamplingParams
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["abc abd abe " * 50], vocab_size=270, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=tok.vocab_size, max_seq_len=64)
    )
    prompts = [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(3)]
    seen = {}

    def reward(prompts, completions, prompt_ids, completion_ids, answer):
        seen["answer"] = answer
        return [float(len(c)) for c in completion_ids]

    loader = RolloutLoader(
        model,
        tok,
        prompts,
        reward,
        num_generations=3,
        prompts_per_step=2,
        sampling=SamplingParams(max_new_tokens=5, seed=0),
        seed=0,
    )
    batch = loader.next()
    assert batch["input_ids"].shape[0] == 6 and seen["answer"][:3] == [seen["answer"][0]] * 3
    assert batch["advantages"].view(2, 3).sum(1).abs().max() < 1e-4  # zero mean within each group
    state = loader.state_dict()
    again = RolloutLoader(model, tok, prompts, reward, 3, 2, SamplingParams(max_new_tokens=5, seed=0), seed=0)
    again.load_state_dict(state)
    assert torch.equal(loader.next()["input_ids"], again.next()["input_ids"])  # resumable and seeded


def test_held_out_reward_is_the_mean_over_fixed_draws_and_moves_with_the_policy():
    from lmforge.inference import SamplingParams
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["abc abd abe " * 50], vocab_size=270, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=tok.vocab_size, max_seq_len=64)
    )
    prompts = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
    lengths = []

    def reward(prompts, completions, prompt_ids, completion_ids):
        lengths.append([len(c) for c in completion_ids])
        return [float(len(c)) for c in completion_ids]

    params = SamplingParams(max_new_tokens=6, seed=3)
    loader = RolloutLoader(model, tok, prompts, reward, 2, 2, params, seed=0)
    first = loader.held_out_reward(prompts[:3])
    assert first == pytest.approx(sum(lengths[-1]) / 6) and len(lengths[-1]) == 6  # 3 prompts x G = 2
    loader.next()  # a training rollout in between draws other seeds: the held-out draws stay the same
    assert loader.held_out_reward(prompts[:3]) == first
    head = torch.nn.Linear(16, tok.vocab_size)  # a policy that ends every completion at once
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.special_ids["<|end|>"]] = 50.0
    model.lm_head = head
    assert loader.held_out_reward(prompts[:3]) <= 1.0 < first


def test_rollouts_are_sharded_by_data_parallel_rank_as_one_rank_samples_them():
    """Rank r's i-th rollout is one rank's rollout i x 2 + r: the same prompts, completions and
    advantages, so two ranks at half the accumulation sample what one rank samples."""
    from lmforge.inference import SamplingParams
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["abc abd abe " * 50], vocab_size=270, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=tok.vocab_size, max_seq_len=64)
    )
    prompts = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(7)]

    def reward(prompts, completions, **_):
        return [float(len(c) % 3) for c in completions]

    def loader(rank, size):
        return RolloutLoader(
            model,
            tok,
            prompts,
            reward,
            2,
            2,
            SamplingParams(max_new_tokens=6, seed=5),
            seed=1,
            dp_rank=rank,
            dp_size=size,
        )

    one, ranks = loader(0, 1), [loader(0, 2), loader(1, 2)]
    for _ in range(3):
        for r in ranks:
            want, got = one.next(), r.next()
            assert torch.equal(got["input_ids"], want["input_ids"])
            assert torch.equal(got["advantages"], want["advantages"])


def test_grpo_on_two_gloo_ranks_trains_the_one_rank_model(tmp_path):
    """At the same global batch, GRPO on 2 data-parallel ranks (DDP, 1 rollout each per step) takes
    the steps that 1 rank takes with 2 rollouts per step: the same weights after 3 steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = str(Path(__file__).parent / "grpo_dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    weights = {}
    for n in (1, 2):
        out = tmp_path / f"n{n}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            worker,
            str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        weights[n] = torch.load(out / "weights.pt")
    one, two = weights[1]["trained"], weights[2]["trained"]
    assert any(not torch.equal(one[k], weights[1]["initial"][k]) for k in one)  # it trained
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-6)
