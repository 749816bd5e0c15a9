"""Reward model: last-token pooling, Bradley-Terry loss (TRL's definition), value-head checkpoint files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.posttrain.reward import (
    VALUE_HEAD_FILE,
    RewardObjective,
    attach_value_head,
    bradley_terry_losses,
    last_positions,
    load_value_head,
    sequence_rewards,
    split_value_heads,
)


def test_bradley_terry_matches_closed_form():
    rng = np.random.default_rng(0)
    rc, rr = rng.normal(size=20), rng.normal(size=20)
    expected = np.logaddexp(0.0, -(rc - rr))  # -log sigma(rc - rr)
    got = bradley_terry_losses(torch.tensor(rc), torch.tensor(rr)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    centered = bradley_terry_losses(torch.tensor(rc), torch.tensor(rr), center=0.01).numpy()
    np.testing.assert_allclose(centered, expected + 0.01 * (rc + rr) ** 2, rtol=1e-12)


def test_last_positions():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, -100, 7], [-100, -100, -100, -100]])
    assert last_positions(labels).tolist() == [2, 3, 0]


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=40, max_seq_len=32))


def test_reward_reads_the_last_real_token_and_ignores_padding(model):
    head = attach_value_head(model)
    torch.nn.init.normal_(head.weight)
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 9, 9]]),
        "labels": torch.tensor([[-100, 3, 4, -100, -100], [-100, 3, 4, -100, -100]]),
    }
    r = sequence_rewards(model, head, batch)
    assert r[0].item() == pytest.approx(r[1].item(), abs=1e-5)  # what follows the last label is padding
    alone = sequence_rewards(
        model, head, {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 3, 4]])}
    )
    assert alone.item() == pytest.approx(r[0].item(), abs=1e-5)


def test_zero_initialised_head_gives_ln2(model):
    head = attach_value_head(model)
    batch = {
        "input_ids": torch.tensor([[1, 2, 3], [1, 2, 4]]),
        "labels": torch.tensor([[-100, 3, 5], [-100, 4, 6]]),
    }
    out = RewardObjective(head).loss(model, batch)
    assert out.count == 1 and out.loss_sum.item() == pytest.approx(math.log(2), abs=1e-7)
    assert "value_head.weight" in dict(model.named_parameters())  # the Trainer's optimizer sees the head


def test_value_head_is_split_out_of_the_checkpoint(model, tmp_path):
    from lmforge.checkpoint.consolidated import load_model, save_model_checkpoint
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["some text here " * 20], vocab_size=262, progress=False, workers=1)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=tok.vocab_size, max_seq_len=32)
    )
    head = attach_value_head(model)
    torch.nn.init.normal_(head.weight)
    ckpt = save_model_checkpoint(model, tok, tmp_path / "checkpoints" / "step_000001", stage="reward", step=1)
    split_value_heads(tmp_path / "checkpoints")
    assert (ckpt / VALUE_HEAD_FILE).exists()
    plain, _ = load_model(ckpt)  # a plain Transformer loads again
    assert not hasattr(plain, "value_head")
    loaded = load_value_head(ckpt, 16)
    assert torch.equal(loaded.weight, head.weight.detach())
