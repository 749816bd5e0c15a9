"""DPO loss math against the paper's closed form, the step-0 sanity values, and TRL's metric definitions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from lmforge.posttrain.dpo import DPOObjective, dpo_losses
from lmforge.posttrain.preference import pad_rows, sequence_logps


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_policy_equal_reference_gives_ln2_and_zero_margins():
    lp = torch.randn(16)
    losses, r_c, r_r = dpo_losses(lp, lp + 1.0, lp, lp + 1.0, beta=0.1)
    assert losses.mean().item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.all(r_c == 0) and torch.all(r_r == 0)
    assert (r_c > r_r).float().mean().item() == 0.0  # strict: ties are not accurate


def test_sigmoid_loss_matches_the_papers_closed_form():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-40, 8, size=64) for _ in range(4))
    for beta in (0.05, 0.1, 0.5):
        # Rafailov et al. Eq. 7: -log sigma(beta log(pi(yw)/ref(yw)) - beta log(pi(yl)/ref(yl)))
        expected = -log_sigmoid(beta * (pc - rc) - beta * (pr - rr))
        losses, r_c, r_r = dpo_losses(
            *(torch.tensor(a, dtype=torch.float64) for a in (pc, pr, rc, rr)), beta=beta
        )
        np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-12)
        np.testing.assert_allclose(r_c.numpy(), beta * (pc - rc), rtol=1e-12)
        np.testing.assert_allclose(r_r.numpy(), beta * (pr - rr), rtol=1e-12)


def test_robust_and_ipo_variants():
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (rng.normal(-20, 5, size=32) for _ in range(4))
    t = [torch.tensor(a, dtype=torch.float64) for a in (pc, pr, rc, rr)]
    beta, eps = 0.1, 0.2
    z = beta * ((pc - rc) - (pr - rr))
    robust = (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    np.testing.assert_allclose(dpo_losses(*t, beta=beta, label_smoothing=eps)[0].numpy(), robust, rtol=1e-12)
    ipo = ((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2
    np.testing.assert_allclose(dpo_losses(*t, beta=beta, loss_type="ipo")[0].numpy(), ipo, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_losses(*t, loss_type="hinge-ish")


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss = dpo_losses(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)[0].sum()
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)  # beta * sigma(0)


class Bigram(torch.nn.Module):
    """A tiny language model: logits depend on the current token only."""

    def __init__(self, vocab: int = 12):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, ids):
        return self.table[ids]


def pair_batch():
    # prompt [1, 2, 3], chosen [4, 5], rejected [6] (TRL's collator example), shifted rows
    rows = [([1, 2, 3, 4], [-100, -100, 4, 5]), ([1, 2, 3], [-100, -100, 6])]
    return pad_rows(rows, pad_id=0)


def test_sequence_logps_sum_over_completion_tokens_only():
    torch.manual_seed(0)
    model = Bigram()
    batch = pair_batch()
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [1, 2, 3, 0]]
    lp = sequence_logps(model, batch)
    logp = torch.log_softmax(model.table, -1)
    assert lp[0].item() == pytest.approx((logp[3, 4] + logp[4, 5]).item(), rel=1e-6)
    assert lp[1].item() == pytest.approx(logp[3, 6].item(), rel=1e-6)


def test_objective_with_frozen_reference_and_precomputed_logps_agree():
    torch.manual_seed(0)
    model = Bigram()
    batch = pair_batch()
    frozen = DPOObjective(beta=0.1, ref_model=copy.deepcopy(model))
    out = frozen.loss(model, batch)
    assert out.count == 1 and out.loss_sum.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/margins"].item() == 0.0

    with torch.no_grad():
        model.table.add_(torch.randn_like(model.table))
    ref = sequence_logps(frozen.ref_model, batch)
    pre = DPOObjective(beta=0.1).loss(model, {**batch, "ref_logps": ref})
    assert pre.loss_sum.item() == pytest.approx(frozen.loss(model, batch).loss_sum.item(), rel=1e-6)


def test_training_on_separable_pairs_lowers_the_loss():
    torch.manual_seed(0)
    model = Bigram()
    objective = DPOObjective(beta=0.5, ref_model=copy.deepcopy(model))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = pair_batch()
    for _ in range(30):
        out = objective.loss(model, batch)
        opt.zero_grad()
        out.loss_sum.backward()
        opt.step()
    out = objective.loss(model, batch)
    assert out.loss_sum.item() < 0.3 and out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["rewards/margins"].item() > 0


def test_rpo_alpha_adds_the_chosen_per_token_nll():
    torch.manual_seed(0)
    model = Bigram()
    batch = pair_batch()  # chosen: 2 completion tokens (4, 5 after 3), rejected: 1
    with torch.no_grad():
        model.table.add_(torch.randn_like(model.table))
    ref = DPOObjective(beta=0.1, ref_model=copy.deepcopy(model))
    rpo = DPOObjective(beta=0.1, ref_model=copy.deepcopy(model), rpo_alpha=0.5)
    logp = torch.log_softmax(model.table, -1)
    nll = -(logp[3, 4] + logp[4, 5]).item() / 2
    out = rpo.loss(model, batch)
    assert out.loss_sum.item() == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-6)
    assert out.metrics["nll_loss"].item() == pytest.approx(nll, rel=1e-6)
    assert "nll_loss" not in ref.loss(model, batch).metrics
