"""Direct Preference Optimization (Rafailov et al. 2023) as an objective of the one Trainer.

With Δ = log πθ(y|x) − log π_ref(y|x) summed over completion tokens, and z = β·(Δ_chosen − Δ_rejected):
  sigmoid  −log σ(z)                                       (the paper's Eq. 7)
  robust   (−(1−ε)·log σ(z) + ε·log σ(−z)) / (1 − 2ε)        (label smoothing ε; TRL "robust")
  ipo      (Δ_chosen − Δ_rejected − 1/(2β))²                 (Azar et al.; TRL "ipo")
With rpo_alpha α > 0 each pair adds α·NLL(chosen), the chosen completion's mean per-token negative
log-likelihood (RPO, Pang et al. 2024; TRL's rpo_alpha, which averages over the batch's tokens
instead of per pair): it keeps DPO from lowering the likelihood of the chosen answers.
With pretrain_weight w > 0 (`dpo.mix_pretrain`) each pair adds w · the mean per-token NLL of the
micro-batch's pretraining windows (lmforge.posttrain.mixing): it keeps the base model's language.
Metrics follow TRL: rewards/chosen = β·Δ_chosen, rewards/rejected = β·Δ_rejected,
rewards/margins = their mean difference, rewards/accuracies = mean(chosen > rejected) (strict).
The reference is either precomputed once (batch["ref_logps"], the default: every pair's reference
log-probs are computed by the starting policy before the first step, and no second model is held
during training) or, with `dpo.precompute_ref: false`, a frozen copy of the starting policy held
by the objective, built like the policy (on the meta device, the recipe's parallel plan, each
rank reading its shards), so under FSDP every rank holds its shard of the reference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.model.loss import IGNORE_INDEX
from lmforge.posttrain.mixing import pretrain_nll_term
from lmforge.posttrain.preference import sequence_logps
from lmforge.train.objectives import LossOutput, Objective


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards (β·Δ) of chosen and rejected: three [B] tensors."""
    delta_c = policy_chosen - ref_chosen
    delta_r = policy_rejected - ref_rejected
    logits = delta_c - delta_r
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits)
        if label_smoothing:
            eps = label_smoothing
            losses = ((1 - eps) * losses + eps * F.logsigmoid(-beta * logits)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r} (sigmoid or ipo)")
    return losses, beta * delta_c.detach(), beta * delta_r.detach()


def parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of the parameters this rank holds, bytes of the whole model's): a sharded parameter
    (a DTensor, FSDP2 / tensor parallel) counts its local shard in the first."""
    from torch.distributed.tensor import DTensor

    local = full = 0
    for p in model.parameters():
        held = p.to_local() if isinstance(p, DTensor) else p
        local += held.numel() * held.element_size()
        full += p.numel() * p.element_size()
    return local, full


class DPOObjective(Objective):
    """loss(model, batch) on a [chosen; rejected] batch (lmforge.posttrain.preference); count = pairs."""

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        ref_model=None,
        rpo_alpha: float = 0.0,
        pretrain_weight: float = 0.0,
    ):
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.rpo_alpha, self.pretrain_weight = rpo_alpha, pretrain_weight
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)

    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.ref_model is None:
            raise ValueError("DPO needs batch['ref_logps'] (precomputed) or a reference model")
        with torch.no_grad():
            return sequence_logps(self.ref_model, batch)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        logps = sequence_logps(model, batch)
        ref = self.reference_logps(batch).to(logps.device, logps.dtype)
        n = logps.shape[0] // 2
        losses, r_c, r_r = dpo_losses(
            logps[:n], logps[n:], ref[:n], ref[n:], self.beta, self.loss_type, self.label_smoothing
        )
        metrics = {
            "rewards/chosen": r_c.mean(),
            "rewards/rejected": r_r.mean(),
            "rewards/margins": (r_c - r_r).mean(),
            "rewards/accuracies": (r_c > r_r).float().mean(),
            "logps/chosen": logps[:n].detach().mean(),
            "logps/rejected": logps[n:].detach().mean(),
        }
        if self.rpo_alpha:
            tokens = (batch["labels"][:n] != IGNORE_INDEX).sum(-1).clamp(min=1)
            nll = -logps[:n] / tokens
            losses = losses + self.rpo_alpha * nll
            metrics["nll_loss"] = nll.detach().mean()
        pretrain_nll = pretrain_nll_term(model, batch) if self.pretrain_weight else None
        if pretrain_nll is not None:
            losses = losses + self.pretrain_weight * pretrain_nll
            metrics["pretrain_nll"] = pretrain_nll.detach()
        return LossOutput(losses.sum(), n, metrics)
