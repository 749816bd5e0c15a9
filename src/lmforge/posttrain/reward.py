"""The reward model: the transformer plus a scalar head, trained with the Bradley–Terry loss.

The reward of a sequence is `value_head(h)` where h is the final-normed hidden state
(`model(ids, return_hidden=True)`) at the sequence's last token, the `<|end|>` closing the
completion (TRL's RewardTrainer: the last non-pad token). Batches come from
lmforge.posttrain.preference ([chosen; rejected], right padded, shifted: the final token is
only a label), so `sequence_rewards` puts it back; the full sequence is one token longer than
the batch, hence reward pairs are tokenized to at most `seq_len - 1` inputs (`REWARD_ROOM`).
Loss per pair (TRL's RewardTrainer): −log σ(r_c − r_r) + c·(r_c + r_r)² with c the optional
centering coefficient. A reward checkpoint is a normal model checkpoint plus
`value_head.safetensors` ({"weight": [1, d_model], "bias": [1]}).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX
from lmforge.train.objectives import LossOutput, Objective

VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_ROOM = 1  # the final token that sequence_rewards appends to each row


def last_positions(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last labelled position of every row [B] (0 for a row with no label)."""
    T = labels.shape[1]
    idx = torch.arange(T, device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, idx, torch.zeros_like(idx)).amax(dim=1)


def sequence_rewards(model, head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reward of every row [rows], read at the row's last token: the whole sequence is the
    input ids with the last label (the completion's final token, `<|end|>` when it ended) put
    back after them, since a shifted batch holds the final token only as a label."""
    ids, labels = batch["input_ids"], batch["labels"]
    rows = torch.arange(ids.shape[0], device=ids.device)
    pos = last_positions(labels) + 1
    full = torch.cat([ids, ids[:, -1:]], dim=1)
    full[rows, pos] = torch.where(
        labels[rows, pos - 1] != IGNORE_INDEX, labels[rows, pos - 1], full[rows, pos]
    )
    hidden = model(full, return_hidden=True)
    return head(hidden[rows, pos].to(head.weight.dtype)).squeeze(-1).float()


def bradley_terry_losses(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, center: float = 0.0
) -> torch.Tensor:
    losses = -F.logsigmoid(r_chosen - r_rejected)
    if center:
        losses = losses + center * (r_chosen + r_rejected) ** 2
    return losses


def new_value_head(d_model: int) -> nn.Linear:
    head = nn.Linear(d_model, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class RewardObjective(Objective):
    """Bradley–Terry on [chosen; rejected] batches; the value head is trained with the model."""

    def __init__(self, head: nn.Module, center: float = 0.0):
        self.head, self.center = head, center

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        rewards = sequence_rewards(model, self.head, batch)
        n = rewards.shape[0] // 2
        r_c, r_r = rewards[:n], rewards[n:]
        losses = bradley_terry_losses(r_c, r_r, self.center)
        metrics = {
            "accuracy": (r_c > r_r).float().mean().detach(),
            "margin": (r_c - r_r).mean().detach(),
            "reward/mean": rewards.mean().detach(),
        }
        return LossOutput(losses.sum(), n, metrics)


@torch.no_grad()
def pair_accuracy(model, head: nn.Module, pairs, pad_id: int, batch_size: int = 16) -> float:
    """Fraction of held-out pairs whose chosen reward is strictly higher."""
    from lmforge.posttrain.preference import collate_pairs

    model.eval()
    device = next(model.parameters()).device
    hits = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        r = sequence_rewards(model, head, batch)
        hits += int((r[: len(chunk)] > r[len(chunk) :]).sum())
    return hits / max(1, len(pairs))


def attach_value_head(model: nn.Module) -> nn.Linear:
    """Register a zero-initialised head as `model.value_head` so the Trainer optimises it with
    the model; `split_value_heads` moves it out of the saved weights afterwards."""
    head = new_value_head(model.cfg.d_model).to(next(model.parameters()).device)
    model.value_head = head
    return head


def split_value_heads(ckpt_root: Path) -> None:
    """In every checkpoint under `ckpt_root`, move value_head.* from model.safetensors into
    value_head.safetensors, so model.safetensors is a plain Transformer again (load_model reads it)."""
    from safetensors.torch import load_file, save

    from lmforge.checkpoint.consolidated import WEIGHTS, list_checkpoints, weights_file
    from lmforge.fileio import atomic_write_bytes

    prefix = "value_head."
    for _, d in list_checkpoints(Path(ckpt_root)):
        sd = load_file(str(weights_file(d)))
        head = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if not head:
            continue
        atomic_write_bytes(d / VALUE_HEAD_FILE, save(head))
        rest = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        atomic_write_bytes(d / WEIGHTS, save(rest, metadata={"format": "pt"}))


def join_value_head(checkpoint_dir: Path) -> None:
    """Undo `split_value_heads` for one checkpoint: value_head.* back into model.safetensors (and
    value_head.safetensors removed), so a run resumed from it loads the head with the model."""
    from safetensors.torch import load_file, save

    from lmforge.checkpoint.consolidated import WEIGHTS
    from lmforge.fileio import atomic_write_bytes

    path = Path(checkpoint_dir) / VALUE_HEAD_FILE
    if not path.is_file():
        return
    sd = load_file(str(Path(checkpoint_dir) / WEIGHTS))
    sd.update({f"value_head.{k}": v for k, v in load_file(str(path)).items()})
    atomic_write_bytes(Path(checkpoint_dir) / WEIGHTS, save(sd, metadata={"format": "pt"}))
    path.unlink()


def load_value_head(checkpoint_dir: Path, d_model: int) -> nn.Linear:
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / VALUE_HEAD_FILE
    if not path.is_file():
        raise LmforgeError(f"{path}: not a reward model checkpoint (no {VALUE_HEAD_FILE})")
    head = new_value_head(d_model)
    try:
        head.load_state_dict(load_file(str(path)))
    except Exception as e:  # safetensors raises several types on a torn file
        raise LmforgeError(f"{path}: unreadable value head ({e})") from None
    return head


def load_reward_model(path: str | Path, device: str = "cpu"):
    """(model, value head, tokenizer) from a reward checkpoint (or a stage/run dir holding one)."""
    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model, tok = load_model(ckpt, device=device)
    head = load_value_head(ckpt, model.cfg.d_model).to(device)
    return model, head, tok
