"""torchrun entry of the GRPO data-parallel test: the rl stage's objective and rollout loader in the
Trainer, on 1 or 2 gloo ranks (DDP) at the same global batch (train.batch_tokens).

    torchrun --standalone --nproc-per-node N tests/grpo_dist_worker.py OUT_DIR

Rank 0 writes OUT_DIR/weights.pt (the initial and trained weights) and the Trainer's OUT_DIR/metrics.jsonl.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from lmforge.distributed import setup_distributed, teardown_distributed
from lmforge.distributed.config import ParallelConfig
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.posttrain.config import RLTrainConfig
from lmforge.recipe import load_recipe
from lmforge.stages.posttrain import RLStage, StageData
from lmforge.tokenizer import Tokenizer
from lmforge.train.trainer import Trainer

SEQ = 48


def reward(prompts, completions, **_):
    """Longer completions of an odd number of characters score higher: varied rewards, not all zero."""
    return [float(len(c) % 2) + 0.1 * len(c) for c in completions]


def main() -> None:
    out = Path(sys.argv[1])
    pcfg = ParallelConfig(dp_replicate=int(os.environ.get("WORLD_SIZE", "1")))  # DDP over every rank
    ctx = setup_distributed(pcfg, "cpu")
    tok = Tokenizer.train(["to be or not to be, that is the question " * 40], vocab_size=280, progress=False,
                          workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=tok.vocab_size, max_seq_len=SEQ)
    )
    recipe = load_recipe(None, {"seed": 0, "rl.num_generations": 2, "rl.prompts_per_step": 2,
                                "rl.max_new_tokens": 6})
    # 2 micro-batches of 4 rows x SEQ per step in all: 2 rollouts on one rank, 1 on each of 2 ranks
    cfg = RLTrainConfig(max_steps=3, micro_batch=4, seq_len=SEQ, batch_tokens=2 * 4 * SEQ, lr=1e-2,
                        warmup_steps=0, device="cpu")
    prompts = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(10)]
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stage = RLStage(recipe, out)
    objective, loader = stage.build(model, tok, cfg, StageData(None, prompts, reward), ctx)
    trainer = Trainer(model, objective, loader, cfg, out, seed=0, stage="rl", parallel_cfg=pcfg, ctx=ctx)
    trainer.fit()
    if ctx.is_main:
        trained = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
        torch.save({"initial": initial, "trained": trained}, out / "weights.pt")
    teardown_distributed()


if __name__ == "__main__":
    main()
