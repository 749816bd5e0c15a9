"""Loss parallelism under tensor parallel 2 on CPU: what each rank holds for the loss, and its time.

Two gloo processes train the same model with `parallel.tp 2`, once with the head gathering the
full logits (`loss_parallel: false`) and once with loss parallelism (the default: logits sharded
over the vocabulary, cross-entropy inside `loss_parallel()`). Per rank it reports:

- logits MiB: the local logits tensor the head returns (full [B, T, vocab] vs a vocabulary shard);
- saved MiB: what autograd keeps for backward over one forward + loss (unique storages, local
  shards of DTensors), the activation memory that loss parallelism cuts;
- CPU s/step: rank 0's `time.process_time` per optimizer step after a warm-up step (CPU time,
  less disturbed than wall time by other jobs on a shared box, but still noisy);
- the losses, which must agree between the two modes.

The model: llama, 2 layers, width 256, 8 heads, vocab 16384 (a vocabulary-heavy model, where the
logits dominate), micro-batch 4 x 128 tokens, fp32, AdamW.

usage:
  .venv/bin/python benchmarks/loss_parallel.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARCH = dict(n_layer=2, d_model=256, n_head=8, n_kv_head=4, d_ff=1024, vocab=16384, seq=128, batch=4)
MIB = 2**20


def with_saved_bytes(fn, *args):
    """(fn(*args), bytes of the unique storages autograd saves while it builds the graph; an
    upper bound where a wrapper tensor is counted beside the storage it will wait for)."""
    import torch
    from torch.distributed.tensor import DTensor

    seen: dict[int, int] = {}

    def pack(t):
        local = t._local_tensor if isinstance(t, DTensor) else t
        try:
            storage = local.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:  # a wrapper without storage of its own (an in-flight collective's result)
            seen[id(local)] = local.numel() * local.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = fn(*args)
    return value, sum(seen.values())


def worker(loss_parallel: bool, steps: int) -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from lmforge.distributed import clip_grad_norm_, loss_parallel_context, parallelize, setup_distributed
    from lmforge.distributed.config import ParallelConfig
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.train.objectives import CausalLMObjective

    pcfg = ParallelConfig(tp=int(os.environ["WORLD_SIZE"]), loss_parallel=loss_parallel)
    ctx = setup_distributed(pcfg, "cpu")
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="llama",
        vocab_size=ARCH["vocab"],
        n_layer=ARCH["n_layer"],
        d_model=ARCH["d_model"],
        n_head=ARCH["n_head"],
        n_kv_head=ARCH["n_kv_head"],
        d_ff=ARCH["d_ff"],
        max_seq_len=ARCH["seq"],
        tie_embeddings=False,
    )
    model = parallelize(Transformer(cfg), pcfg, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = CausalLMObjective()
    losses, cpu, saved = [], [], 0
    with torch.no_grad():
        logits = model(torch.zeros(ARCH["batch"], ARCH["seq"], dtype=torch.long))
    local = logits._local_tensor if isinstance(logits, DTensor) else logits
    for step in range(steps + 1):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, ARCH["vocab"], (ARCH["batch"], ARCH["seq"] + 1), generator=g)
        batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
        t0 = time.process_time()
        with loss_parallel_context(loss_parallel):
            out, size = with_saved_bytes(objective.loss, model, batch)
            loss = out.loss_sum / batch["labels"].numel()
            loss.backward()
        clip_grad_norm_(model.parameters(), 1.0, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            cpu.append(time.process_time() - t0)
        saved = max(saved, size)
        losses.append(round(float(loss), 6))
    if ctx.is_main:
        print(
            json.dumps(
                {
                    "loss_parallel": loss_parallel,
                    "logits_mib": local.numel() * local.element_size() / MIB,
                    "saved_mib": saved / MIB,
                    "cpu_s_per_step": sum(cpu) / len(cpu),
                    "losses": losses,
                }
            )
        )
    torch.distributed.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--worker", choices=["gathered", "loss_parallel"])
    args = ap.parse_args()
    if args.worker:
        worker(args.worker == "loss_parallel", args.steps)
        return
    rows = []
    for mode in ("gathered", "loss_parallel"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            __file__,
            "--worker",
            mode,
            "--steps",
            str(args.steps),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(proc.stderr[-4000:])
        rows.append(json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{"))))
    print(f"model {ARCH}, tp 2 on 2 gloo processes, {args.steps} timed steps")
    print(f"{'head':<14} {'logits MiB':>10} {'saved MiB':>10} {'CPU s/step':>10}  losses")
    for r in rows:
        name = "loss parallel" if r["loss_parallel"] else "gathered"
        print(
            f"{name:<14} {r['logits_mib']:>10.1f} {r['saved_mib']:>10.1f} "
            f"{r['cpu_s_per_step']:>10.2f}  {r['losses']}"
        )


if __name__ == "__main__":
    main()
