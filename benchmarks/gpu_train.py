"""Pretraining throughput and MFU of a GPT-2-124M-sized model on one GPU, through the real Trainer.

Variants: llama and gpt2 architectures, bf16 autocast, eager vs torch.compile. Tokens are random
ids over a 50,304 vocabulary (throughput does not depend on their content). Reports the median
tokens/s and MFU of the steps after warm-up (compilation happens in the first steps), as the
trainer's metrics.jsonl records them, plus peak memory.

`--options` runs instead the learning-efficiency options (docs/training.md) on the llama 124M
model under bf16 + torch.compile, one at a time and all together, against plain AdamW: that they
run there (a finite loss) and what each costs in tokens/s (Muon's Newton-Schulz steps are not free).

    python benchmarks/gpu_train.py [--steps 40] [--micro-batch 16] [--seq-len 1024]
    python benchmarks/gpu_train.py --options [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmforge.model.config import ModelConfig, num_params
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.data import PretrainLoader
from lmforge.train.objectives import CausalLMObjective
from lmforge.train.trainer import Trainer

VOCAB = 50304


# name: (ModelConfig overrides, TrainConfig overrides), on the llama 124M model
OPTIONS: dict[str, tuple[dict, dict]] = {
    "adamw": ({}, {}),
    "muon": ({}, {"optimizer": "muon"}),
    "qk_norm": ({"qk_norm": True}, {}),
    "relu2": ({"mlp": "relu2"}, {}),
    "softcap": ({"logit_softcap": 15.0}, {}),
    "zero_init": ({"zero_init_proj": True}, {}),
    "all": (
        {"qk_norm": True, "mlp": "relu2", "logit_softcap": 15.0, "zero_init_proj": True},
        {"optimizer": "muon"},
    ),
}


def run_variant(arch: str, compile_: bool, args, tokens: np.ndarray, out: Path, option: str = "") -> dict:
    torch.manual_seed(0)
    model_opts, train_opts = OPTIONS[option] if option else ({}, {})
    mcfg = ModelConfig(arch=arch, preset="124m", vocab_size=VOCAB, max_seq_len=args.seq_len, **model_opts)
    model = Transformer(mcfg)
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_tokens=args.micro_batch * args.seq_len * args.accum,
        micro_batch=args.micro_batch,
        seq_len=args.seq_len,
        lr=6e-4,
        warmup_steps=10,
        compile=compile_,
        eval_every=0,
        checkpoint_every=0,
        samples=0,
        log_every=1000,
        resume="never",
        **train_opts,
    )
    run_dir = out / f"{arch}_{'compile' if compile_ else 'eager'}{'_' + option if option else ''}"
    loader = PretrainLoader(tokens, args.micro_batch, args.seq_len, seed=0)
    torch.cuda.reset_peak_memory_stats()
    Trainer(model, CausalLMObjective(), loader, cfg, run_dir, model_cfg=mcfg, seed=0).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["step"] > args.warmup and "tokens_per_s" in r]
    return {
        "arch": arch,
        "option": option or "-",
        "compile": compile_,
        "params_M": round(num_params(mcfg) / 1e6, 1),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
        "mfu_pct": round(statistics.median(r["mfu"] for r in steady), 1),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "final_loss": round(records[-1]["loss"], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the medians")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--archs", default="llama,gpt2")
    p.add_argument("--options", action="store_true", help="the learning-efficiency options instead")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=20_000_000, dtype=np.uint16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = (
            [("llama", True, name) for name in OPTIONS]
            if args.options
            else [(arch, c, "") for arch in args.archs.split(",") for c in (False, True)]
        )
        for arch, compile_, option in variants:
            rows.append(run_variant(arch, compile_, args, tokens, Path(tmp), option))
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"micro-batch {args.micro_batch} x "
        f"seq {args.seq_len}, bf16 autocast, {args.steps} steps (median after step {args.warmup})"
    )
    base = rows[0]["tokens_per_s"]
    print("| arch | option | compile | params (M) | tokens/s | vs first row | MFU % | peak mem (GB) | loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['option']} | {r['compile']} | {r['params_M']} | {r['tokens_per_s']:,} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['mfu_pct']} | {r['peak_mem_gb']} | {r['final_loss']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
