"""The optimizers (AdamW, or Muon for the hidden matrices with AdamW for the rest) and the
learning-rate schedules.

Every trainable parameter has one role (`param_roles`): `matrix` (the 2-D weights inside the
blocks), `head` (an untied LM head), `embedding` (token / position / value embeddings, and a tied
head) and `scalar` (norm gains, biases, the value embeddings' gains). No weight decay on
embeddings and scalars: decaying a gain towards 0 or an embedding row that is rarely seen only hurts.

`train.optimizer: muon` gives the matrices to `torch.optim.Muon` (orthogonalised momentum,
modded-nanogpt / nanochat) and everything else to AdamW. Each role has its own learning rate
(`train.muon_lr`, `embedding_lr`, `head_lr`, `scalar_lr`; 0 = `train.lr`), as nanochat does.
Muon's Newton-Schulz iteration runs in `train.muon_ns_dtype` (`MuonAt`).
The schedule stays one curve: the trainer writes the scheduled lr into every group, and
`Optimizers.step` multiplies it by the group's `lr_scale` (role lr / train.lr) for the update.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from lmforge.errors import LmforgeError
from lmforge.train.config import TrainConfig

ROLES = ("matrix", "head", "embedding", "scalar")


def param_roles(model: torch.nn.Module, params: list | None = None) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by role (see the module docstring); tied weights once, as embeddings."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_id = id(head.weight) if isinstance(head, torch.nn.Linear) else None
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    allowed = None if params is None else {id(p) for p in params}
    roles: dict[str, list] = {r: [] for r in ROLES}
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen or (allowed is not None and id(p) not in allowed):
            continue
        seen.add(id(p))
        if id(p) in embeddings:
            roles["embedding"].append(p)
        elif id(p) == head_id:
            roles["head"].append(p)
        elif id(p) in linear and p.dim() == 2:
            roles["matrix"].append(p)
        else:
            roles["scalar"].append(p)
    return roles


def param_groups(model: torch.nn.Module, weight_decay: float, params: list | None = None) -> list[dict]:
    """[decay group (Linear weights), no-decay group (norms, embeddings, biases)]."""
    roles = param_roles(model, params)
    return [
        {"params": roles["matrix"] + roles["head"], "weight_decay": weight_decay, "name": "decay"},
        {"params": roles["embedding"] + roles["scalar"], "weight_decay": 0.0, "name": "no_decay"},
    ]


class Optimizers:
    """Torch optimizers stepped as one, each param group at `lr_scale` x the scheduled lr.

    The trainer's view of one optimizer: `param_groups` (all of them; the trainer sets "lr"),
    `step`, `zero_grad`, `state_dict` / `load_state_dict`. Iterating gives the torch optimizers
    themselves, which is what `torch.distributed.checkpoint.state_dict.get_state_dict` takes
    for a sharded checkpoint.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers)

    def step(self, closure: Callable | None = None) -> None:
        scheduled = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
        try:
            for opt in self.optimizers:
                opt.step(closure)
        finally:
            for g, lr in zip(self.param_groups, scheduled):
                g["lr"] = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise LmforgeError(
                f"the checkpoint's optimizer state holds {len(saved or [])} optimizers, this run has "
                f"{len(self.optimizers)}: was it trained with another train.optimizer?"
            )
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)


def newton_schulz(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float, dtype: torch.dtype):
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation (torch/optim/_muon.py), in `dtype`."""
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    wide = grad.size(0) > grad.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class MuonAt(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in `ns_dtype`.

    torch runs it in bfloat16, right on GPUs; a CPU without bf16 matmul hardware emulates them
    (AMD EPYC, AVX2: a 128x512 bf16 matmul 6x slower than fp32; the demo model's step with Muon
    1.34 s against 0.46 s with the iteration in fp32, and 0.44 s with AdamW). Everything else
    (momentum, Nesterov, the lr adjustment, weight decay, the state dict) is torch's: the step
    only swaps the iteration torch's Muon calls.
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    def step(self, closure: Callable | None = None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        with _newton_schulz_in(self.ns_dtype):
            return super().step(closure)


@contextlib.contextmanager
def _newton_schulz_in(dtype: torch.dtype):
    module = torch.optim._muon
    if not hasattr(module, "_zeropower_via_newtonschulz"):
        raise LmforgeError(
            f"torch {torch.__version__}'s Muon has no _zeropower_via_newtonschulz to run in {dtype}: "
            "set train.muon_ns_dtype: bfloat16"
        )
    original = module._zeropower_via_newtonschulz
    module._zeropower_via_newtonschulz = lambda g, coeffs, steps, eps: newton_schulz(
        g, coeffs, steps, eps, dtype
    )
    try:
        yield
    finally:
        module._zeropower_via_newtonschulz = original


def muon_ns_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """`train.muon_ns_dtype` resolved: auto is bfloat16 on CUDA, float32 elsewhere."""
    if cfg.muon_ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.muon_ns_dtype)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, params: list | None = None) -> Optimizers:
    """AdamW (the fused kernel on CUDA, foreach elsewhere) for every role, or Muon for `matrix`
    with AdamW for the rest (`train.optimizer`); one param group per role, at the role's lr."""
    roles = param_roles(model, params)
    role_lr = {
        "matrix": cfg.muon_lr if cfg.optimizer == "muon" else cfg.lr,
        "head": cfg.head_lr or cfg.lr,
        "embedding": cfg.embedding_lr or cfg.lr,
        "scalar": cfg.scalar_lr or cfg.lr,
    }
    decay = {"matrix": cfg.weight_decay, "head": cfg.weight_decay, "embedding": 0.0, "scalar": 0.0}

    def group(role: str) -> dict:
        return {
            "params": roles[role],
            "name": role,
            "weight_decay": decay[role],
            "lr": cfg.lr,
            "lr_scale": role_lr[role] / cfg.lr if cfg.lr else 1.0,
        }

    adam_roles = [r for r in ROLES if roles[r] and not (cfg.optimizer == "muon" and r == "matrix")]
    optimizers = []
    if cfg.optimizer == "muon" and roles["matrix"]:
        ns_dtype = muon_ns_dtype(cfg, roles["matrix"][0].device)
        optimizers.append(MuonAt([group("matrix")], ns_dtype=ns_dtype, lr=cfg.lr, momentum=cfg.muon_momentum))
    if adam_roles:
        device = roles[adam_roles[0]][0].device
        fused = device.type == "cuda"
        optimizers.append(
            torch.optim.AdamW(
                [group(r) for r in adam_roles],
                lr=cfg.lr,
                betas=(cfg.beta1, cfg.beta2),
                eps=1e-8,
                fused=fused,
                foreach=None if fused else True,
            )
        )
    if not optimizers:
        raise LmforgeError("nothing to optimise: the model has no trainable parameters")
    return Optimizers(optimizers)


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule.

    `progress` in [0, 1] replaces step / max_steps as the clock of the decay (used with
    `train.schedule_by: time`, where it is the elapsed share of max_minutes).

    cosine: from lr down to lr·min_lr_ratio over the remaining steps.
    wsd:    warmup, stable at lr, then a linear decay to lr·min_lr_ratio over the last
            `decay_fraction` of max_steps (warmup-stable-decay).
    constant: lr after warmup.
    """
    total = max(cfg.max_steps, 1)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if progress is not None:
        step = int(min(max(progress, 0.0), 1.0) * total)
    if cfg.schedule == "cosine":
        span = max(total - cfg.warmup_steps, 1)
        frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))
    decay_start = total - int(round(cfg.decay_fraction * total))
    if step < decay_start:
        return peak
    frac = min((step - decay_start) / max(total - decay_start, 1), 1.0)
    return peak - (peak - floor) * frac
