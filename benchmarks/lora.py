"""Full fine-tuning vs LoRA SFT on the same model and data: memory, optimizer state, trainable
parameters, checkpoint size and speed.

Both runs train the same randomly initialised model (default d_model 512, 8 layers, 8 heads, SwiGLU,
a BPE tokenizer of 2,048 ids trained on the plays) on the demo SFT conversations with the one Trainer
and the sft objective, for the same steps and batch; LoRA adapts `--targets` (default every block
linear: wq wk wv wo w1 w2 w3) at `--rank`. Each mode runs in a process of its own, so its peak RSS
(`resource.getrusage` ru_maxrss: the process's peak resident memory, weights included) is its own:
`peak_rss_steps` over the training steps (read just before the final checkpoint is written),
`peak_rss` over the whole run (serialising the checkpoint included). "training memory" is the
steps' peak minus the RSS once the model is built (adapters included, before the optimizer
exists): gradients, optimizer state, activations and allocator slack. The LoRA process also holds
peft and transformers (imported by peft), about 100 MB of its baseline. Optimizer state is the bytes of the
tensors in the optimizer's state after training; tokens/s is the Trainer's, over the steps after
the first; the checkpoint is the final one the Trainer writes (model.safetensors + optimizer.pt for
full fine-tuning, adapter.safetensors + optimizer.pt for LoRA).

usage:
  .venv/bin/python benchmarks/lora.py                       # both modes, table + ratios
  .venv/bin/python benchmarks/lora.py --d-model 256 --layers 4 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

WORK = Path("runs/lora-bench")


def tokenizer_and_data(seed: int):
    from lmforge.posttrain.config import SFTConfig
    from lmforge.tasks.demo import build_demo_tasks
    from lmforge.tokenizer import Tokenizer

    tasks = build_demo_tasks(SFTConfig().demo, seed)
    path = WORK / "tokenizer"
    if not path.is_dir():
        text = "\n".join(m["content"] for conv in tasks.sft for m in conv)
        Tokenizer.train([text], vocab_size=2048, progress=False, workers=1).save(path)
    tok = Tokenizer.load(path)
    return tok, tasks.sft


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_mode(args: argparse.Namespace) -> dict:
    import psutil
    import torch

    from lmforge.checkpoint.adapters import base_pointer
    from lmforge.checkpoint.consolidated import list_checkpoints, save_model_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.posttrain.config import LoRAConfig, PostTrainConfig
    from lmforge.posttrain.lora import add_adapters
    from lmforge.posttrain.sft_data import SFTLoader, sft_examples
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    tok, conversations = tokenizer_and_data(args.seed)
    cfg = ModelConfig(
        n_layer=args.layers, d_model=args.d_model, n_head=args.d_model // 64, vocab_size=tok.vocab_size,
        max_seq_len=args.seq_len,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    base = WORK / f"base-d{args.d_model}-l{args.layers}"
    if not base.is_dir():
        save_model_checkpoint(model, tok, base, stage="pretrain")
    if args.mode == "lora":
        add_adapters(
            model, LoRAConfig(rank=args.rank, alpha=2.0 * args.rank, targets=args.targets), base_pointer(base)
        )
    rss_model = psutil.Process().memory_info().rss
    train = PostTrainConfig(
        max_steps=args.steps, micro_batch=args.micro_batch, seq_len=args.seq_len, warmup_steps=1,
        batch_tokens=args.micro_batch * args.seq_len * args.accum, lr=1e-4 if args.mode == "full" else 1e-3,
        resume="never", device="cpu",
    )  # fmt: skip
    examples = sft_examples(conversations, tok, args.seq_len)
    loader = SFTLoader(
        examples, train.micro_batch, train.seq_len, args.seed, tok.special_ids["<|eos|>"], True
    )
    out = WORK / args.mode
    trainer = Trainer(
        model, CausalLMObjective(), loader, train, out, tokenizer=tok, seed=args.seed, stage="sft"
    )
    save, before_save = trainer.save_checkpoint, []

    def measured_save():  # the peak of the training steps, before the final checkpoint is serialised
        before_save.append(peak_rss())
        return save()

    trainer.save_checkpoint = measured_save
    result = trainer.fit()
    peak = peak_rss()
    state_bytes = sum(
        t.numel() * t.element_size()
        for opt in trainer.optimizer
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    ckpt = list_checkpoints(out / "checkpoints")[-1][1]
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file())
    seen = {id(p): p for p in model.parameters()}
    return {
        "mode": args.mode,
        "params": sum(p.numel() for p in seen.values()),
        "trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
        "optimizer_state_mb": state_bytes / 2**20,
        "peak_rss_steps_mb": before_save[0] / 2**20,
        "training_mem_mb": (before_save[0] - rss_model) / 2**20,
        "peak_rss_mb": peak / 2**20,
        "tokens_per_s": sum(speeds) / max(len(speeds), 1),
        "checkpoint_mb": ckpt_bytes / 2**20,
        "final_loss": result.get("loss"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["full", "lora"], help="run one mode only (what the parent runs)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", nargs="+", default=["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.mode:
        print(json.dumps(one_mode(args)))
        return
    passed = sys.argv[1:]
    results = {}
    for mode in ("full", "lora"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mode", mode, *passed], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    keys = list(full)[1:]
    print(f"{'':22}{'full':>14}{'lora':>14}{'full / lora':>14}")
    for k in keys:
        ratio = full[k] / lora[k] if lora[k] else float("inf")
        print(f"{k:22}{full[k]:>14,.1f}{lora[k]:>14,.1f}{ratio:>14.2f}")


if __name__ == "__main__":
    main()
