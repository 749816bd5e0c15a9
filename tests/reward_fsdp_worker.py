"""A reward model (transformer + value head called outside forward) under FSDP 2: prints the
reward and the value head's gradient norm, which must equal the single-process ones."""

import sys

import torch
import torch.distributed as dist

from lmforge.distributed import parallelize, setup_distributed
from lmforge.distributed.config import ParallelConfig
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def reward_and_grad(layout: ParallelConfig) -> tuple[float, float]:
    ctx = setup_distributed(layout, "cpu")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=64, max_seq_len=16))
    model.value_head = torch.nn.Linear(32, 1)
    parallelize(model, layout, ctx)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    reward = model.value_head(model(ids, return_hidden=True)[:, -1]).sum()
    reward.backward()
    grad = model.value_head.weight.grad
    grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return float(reward), float(grad.norm())


if __name__ == "__main__":
    layout = ParallelConfig(dp_shard=int(sys.argv[1]))
    reward, grad = reward_and_grad(layout)
    if layout.dp_shard == 1 or dist.get_rank() == 0:
        print(f"RESULT {reward:.6f} {grad:.6f}", flush=True)
