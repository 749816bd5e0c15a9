"""Training throughput on CPU: lmforge's Trainer vs transformers' LlamaForCausalLM in a plain loop.

Same architecture (6 layers, width 256, 8 heads, SwiGLU 704, vocab 4096, tied embeddings), same
batch (16 x 256 tokens per step), fp32, AdamW, clipping at 1.0, random token windows from the
same array. Each contender runs in its own child process of this one (same thread count),
alternating `--rounds` times; the figure is the median tokens/s over the timed steps (the first
`--warmup` steps of every run are not timed: allocation, and compilation when `--compile`).

lmforge runs through the real `Trainer` (loader, accumulation, clipping, guard, metrics.jsonl);
its tokens/s is read back from metrics.jsonl. transformers runs the loop a user would write:
`loss = model(input_ids, labels=labels).loss; loss.backward(); clip; opt.step(); opt.zero_grad()`.

usage:
  .venv/bin/python benchmarks/train.py                 # eager lmforge vs HF
  .venv/bin/python benchmarks/train.py --compile       # lmforge with torch.compile (inductor, CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH = dict(n_layer=6, d_model=256, n_head=8, d_ff=704, vocab=4096, seq=256, batch=16)


def tokens():
    import numpy as np

    return np.random.default_rng(0).integers(0, ARCH["vocab"], size=2_000_000).astype(np.uint16)


def child_lmforge(steps: int, warmup: int, compile_: bool) -> list[float]:
    import torch

    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.train.config import TrainConfig
    from lmforge.train.data import PretrainLoader
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    torch.manual_seed(0)
    mcfg = ModelConfig(n_layer=ARCH["n_layer"], d_model=ARCH["d_model"], n_head=ARCH["n_head"], d_ff=ARCH["d_ff"],
                       vocab_size=ARCH["vocab"], max_seq_len=ARCH["seq"])
    cfg = TrainConfig(max_steps=steps + warmup, batch_tokens=ARCH["batch"] * ARCH["seq"], micro_batch=ARCH["batch"],
                      seq_len=ARCH["seq"], lr=1e-3, warmup_steps=5, eval_every=0, checkpoint_every=0, samples=0,
                      compile=compile_, resume="never", peak_flops=1.0)
    with tempfile.TemporaryDirectory() as d:
        loader = PretrainLoader(tokens(), ARCH["batch"], ARCH["seq"], seed=0)
        Trainer(Transformer(mcfg), CausalLMObjective(), loader, cfg, Path(d), model_cfg=mcfg).fit()
        recs = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > warmup]


def child_hf(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=ARCH["vocab"], hidden_size=ARCH["d_model"], intermediate_size=ARCH["d_ff"],
                      num_hidden_layers=ARCH["n_layer"], num_attention_heads=ARCH["n_head"],
                      num_key_value_heads=ARCH["n_head"], max_position_embeddings=ARCH["seq"],
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = tokens()
    rng = __import__("numpy").random.default_rng(0)
    out = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        starts = rng.integers(0, len(data) - ARCH["seq"] - 1, size=ARCH["batch"])
        x = torch.from_numpy(__import__("numpy").stack([data[s : s + ARCH["seq"]] for s in starts]).astype("int64"))
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels internally
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            out.append(ARCH["batch"] * ARCH["seq"] / (time.perf_counter() - t0))
    return out


def run_child(which: str, args) -> list[float]:
    cmd = [sys.executable, __file__, "--child", which, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.compile:
        cmd.append("--compile")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{which} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each contender (default: 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--compile", action="store_true", help="lmforge with torch.compile")
    p.add_argument("--child", choices=["lmforge", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        tps = child_lmforge(args.steps, args.warmup, args.compile) if args.child == "lmforge" else child_hf(
            args.steps, args.warmup)
        print(json.dumps(tps))
        return 0
    results: dict[str, list[float]] = {"lmforge": [], "hf": []}
    for r in range(args.rounds):
        for which in ("lmforge", "hf"):
            tps = run_child(which, args)
            results[which] += tps
            print(f"round {r + 1}: {which:8s} median {statistics.median(tps):8.0f} tokens/s", flush=True)
    lm, hf = statistics.median(results["lmforge"]), statistics.median(results["hf"])
    print(f"arch {ARCH}, fp32, {args.threads} threads, compile={args.compile}")
    print(f"lmforge Trainer: {lm:.0f} tokens/s | transformers LlamaForCausalLM loop: {hf:.0f} tokens/s | "
          f"ratio {lm / hf:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
