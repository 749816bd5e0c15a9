"""Training throughput on CPU: lmforge's Trainer vs transformers' LlamaForCausalLM in a plain loop.

Same architecture and batch on both sides: `--model small` (default; 6 layers, width 256, 8 heads,
SwiGLU 704, vocab 4096, tied embeddings, 16 x 256 tokens per step) or `--model demo` (the model and
micro-batch `make demo` pretrains: 4 layers, width 128, 4 heads, SwiGLU 384, 8 x 256 tokens),
fp32, AdamW, clipping at 1.0, random token windows from the same array. Each contender runs in
its own child process of this one (same thread count), alternating `--rounds` times; the first
`--warmup` steps of every run are not timed (allocation, and compilation with torch.compile).
Reported per contender: the median tokens/s over all timed steps and the best step (the least
disturbed one: on a shared machine the median measures the other jobs as much as the code, the
best step is the `timeit` convention).

lmforge runs through the real `Trainer` (loader, accumulation, clipping, guard, metrics.jsonl);
its tokens/s is read back from metrics.jsonl. transformers runs the loop a user would write:
`loss = model(input_ids, labels=labels).loss; loss.backward(); clip; opt.step(); opt.zero_grad()`.

`--interleaved` measures the forward + backward pass alone (no optimizer, no loader) of lmforge's
Transformer (eager and compiled) and of LlamaForCausalLM in ONE process, alternating them call by
call, and reports each one's best and median of `--steps` calls: the comparison least disturbed by
other jobs. Both sides compute the same thing: fp32, SDPA attention (HF's `attn_implementation=
"sdpa"`), the mean cross-entropy over the 255 predicted positions of each row (HF shifts the labels
inside its loss; lmforge scores labels shifted by one with the last one ignored, as its loader
gives them, through the trainer's loss function).

`--options` prices the learning-efficiency options (docs/training.md): one real Trainer per
variant (the baseline, then each option alone: Muon, QK-norm, ReLU² and GELU MLPs, logit softcap,
zero-init projections, document masking) in ONE process, their whole training steps (loader,
forward, backward, clipping, optimizer) alternated call by call; best and median tokens/s of
`--steps` steps each, and the ratio to the baseline. The token stream has an <|eos|> every 300
tokens or so (web-sized documents), so the document mask has boundaries to mask.

usage:
  .venv/bin/python benchmarks/train.py                 # lmforge eager vs HF
  .venv/bin/python benchmarks/train.py --compile       # + lmforge with torch.compile (inductor, CPU)
  .venv/bin/python benchmarks/train.py --interleaved   # forward+backward only, one process, best of N
  .venv/bin/python benchmarks/train.py --interleaved --model demo   # the same for the demo's model
  .venv/bin/python benchmarks/train.py --options       # tokens/s of each learning-efficiency option
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

SHAPES = {
    "small": dict(n_layer=6, d_model=256, n_head=8, d_ff=704, vocab=4096, seq=256, batch=16),
    # recipes/shakespeare.yaml's pretrain model and micro-batch (what `make demo` trains)
    "demo": dict(n_layer=4, d_model=128, n_head=4, d_ff=384, vocab=4096, seq=256, batch=8),
}
ARCH = dict(SHAPES["small"])  # set from --model in main()


def tokens():
    import numpy as np

    return np.random.default_rng(0).integers(0, ARCH["vocab"], size=2_000_000).astype(np.uint16)


def train_config(**options):
    from lmforge.train.config import TrainConfig

    return TrainConfig(
        batch_tokens=ARCH["batch"] * ARCH["seq"],
        micro_batch=ARCH["batch"],
        seq_len=ARCH["seq"],
        lr=1e-3,
        warmup_steps=5,
        eval_every=0,
        checkpoint_every=0,
        samples=0,
        resume="never",
        peak_flops=1.0,
        **options,
    )


def child_lmforge(steps: int, warmup: int, compile_: bool) -> list[float]:
    import torch

    from lmforge.model.transformer import Transformer
    from lmforge.train.data import PretrainLoader
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    torch.manual_seed(0)
    mcfg = model_config()
    cfg = train_config(max_steps=steps + warmup, compile=compile_)
    with tempfile.TemporaryDirectory() as d:
        loader = PretrainLoader(tokens(), ARCH["batch"], ARCH["seq"], seed=0)
        Trainer(Transformer(mcfg), CausalLMObjective(), loader, cfg, Path(d), model_cfg=mcfg).fit()
        recs = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > warmup]


def hf_model():
    """LlamaForCausalLM of ARCH's shape, with the SDPA attention lmforge uses."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=ARCH["vocab"],
        hidden_size=ARCH["d_model"],
        intermediate_size=ARCH["d_ff"],
        num_hidden_layers=ARCH["n_layer"],
        num_attention_heads=ARCH["n_head"],
        num_key_value_heads=ARCH["n_head"],
        max_position_embeddings=ARCH["seq"],
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).train()
    if model.config._attn_implementation != "sdpa":
        raise SystemExit(f"transformers picked {model.config._attn_implementation!r} attention, not sdpa")
    return model


def model_config(**options):
    from lmforge.model.config import ModelConfig

    shape = dict(
        n_layer=ARCH["n_layer"],
        d_model=ARCH["d_model"],
        n_head=ARCH["n_head"],
        d_ff=ARCH["d_ff"],
        vocab_size=ARCH["vocab"],
        max_seq_len=ARCH["seq"],
    )
    return ModelConfig(**{**shape, **options})


def child_hf(steps: int, warmup: int) -> list[float]:
    import torch

    torch.manual_seed(0)
    model = hf_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = tokens()
    rng = __import__("numpy").random.default_rng(0)
    out = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        starts = rng.integers(0, len(data) - ARCH["seq"] - 1, size=ARCH["batch"])
        x = torch.from_numpy(
            __import__("numpy").stack([data[s : s + ARCH["seq"]] for s in starts]).astype("int64")
        )
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels internally
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            out.append(ARCH["batch"] * ARCH["seq"] / (time.perf_counter() - t0))
    return out


def timed(f) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a machine shared with other
    jobs the CPU time is the steadier measure of the work itself: waiting for a core adds wall
    time but no CPU time (with one thread it is the work alone; with more it includes the time
    idle threads spin)."""
    t0, c0 = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - t0, time.process_time() - c0


def best_and_median(times: dict[str, list[tuple[float, float]]], base: str, tokens_per_call: int) -> None:
    """One line per contender: best and median tokens/s of wall time, and median tokens per CPU
    second, each as a ratio to `base`'s."""

    def stats(t):
        wall, cpu = [w for w, _ in t], [c for _, c in t]
        return min(wall), statistics.median(wall), statistics.median(cpu)

    best0, med0, cpu0 = stats(times[base])
    for name, t in times.items():
        best, med, cpu = stats(t)
        print(
            f"{name:16s} best {tokens_per_call / best:7.0f} tokens/s ({best0 / best:.2f}x)   "
            f"median {tokens_per_call / med:7.0f} tokens/s ({med0 / med:.2f}x)   "
            f"median {tokens_per_call / cpu:7.0f} tokens/CPU-s ({cpu0 / cpu:.2f}x {base})"
        )


def interleaved(steps: int, threads: int) -> None:
    import torch

    from lmforge.model.loss import IGNORE_INDEX, scored_count, summed_token_nll
    from lmforge.model.transformer import Transformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = Transformer(model_config())
    compiled = torch.compile(ours)
    hf = hf_model()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the tied head is the embedding
        raise SystemExit(f"weights do not map onto LlamaForCausalLM: {missing} {unexpected}")
    x = torch.randint(0, ARCH["vocab"], (ARCH["batch"], ARCH["seq"]))
    # what lmforge's loader gives: the next token, and nothing to predict after the last one
    labels = torch.cat([x[:, 1:], torch.full_like(x[:, :1], IGNORE_INDEX)], dim=1)
    count = scored_count(labels)

    def lm(model):
        def f():
            (summed_token_nll(model(x), labels) / count).backward()

        return f

    def hf_step():
        hf(input_ids=x, labels=x).loss.backward()  # HF shifts the labels inside its loss

    calls = {"lmforge": lm(ours), "lmforge+compile": lm(compiled), "hf": hf_step}
    for f in calls.values():  # warm-up (compilation)
        f()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    order = list(calls)
    for i in range(steps):  # the order rotates each round, so no contender always runs after the same one
        for name in order[i % len(order) :] + order[: i % len(order)]:
            times[name].append(timed(calls[name]))
    print(f"arch {ARCH}, fp32, {threads} threads, forward+backward, {steps} interleaved calls each")
    best_and_median(times, "hf", ARCH["batch"] * ARCH["seq"])


def hf_state_dict(model) -> dict:
    """lmforge's weights under transformers' names (what `lmforge export` writes)."""
    from lmforge.model.convert import to_hf_state_dict

    return to_hf_state_dict(model)


OPTIONS = {  # variant: (ModelConfig options, TrainConfig options)
    "baseline": ({}, {}),
    "muon": ({}, {"optimizer": "muon"}),  # Newton-Schulz in fp32 on the CPU (muon_ns_dtype auto)
    "muon bf16-ns": ({}, {"optimizer": "muon", "muon_ns_dtype": "bfloat16"}),  # torch's own precision
    "qk_norm": ({"qk_norm": True}, {}),
    "mlp relu2": ({"mlp": "relu2", "d_ff": 0}, {}),  # d_ff 0: the 4·d these MLPs take
    "mlp gelu": ({"mlp": "gelu", "d_ff": 0}, {}),
    "logit_softcap 15": ({"logit_softcap": 15.0}, {}),
    "zero_init_proj": ({"zero_init_proj": True}, {}),
    "doc_mask": ({}, {"doc_mask": True}),
    "value_embeds": ({"value_embeds": 2}, {}),
}
EOS = 0  # the document separator of --options's token stream


def options(steps: int, threads: int, compile_: bool) -> None:
    import numpy as np
    import torch

    from lmforge.model.transformer import Transformer
    from lmforge.train.data import PretrainLoader
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    torch.set_num_threads(threads)
    data = tokens()
    data[data == EOS] = 1
    data[np.random.default_rng(1).random(len(data)) < 1 / 300] = EOS
    trainers = {}
    with tempfile.TemporaryDirectory() as d:
        for name, (model_opts, train_opts) in OPTIONS.items():
            torch.manual_seed(0)
            mcfg = model_config(**model_opts)
            cfg = train_config(max_steps=10**6, compile=compile_, **train_opts)
            loader = PretrainLoader(
                data, ARCH["batch"], ARCH["seq"], seed=0, doc_mask=cfg.doc_mask, eos_id=EOS
            )
            out = Path(d) / name.replace(" ", "_")
            trainers[name] = Trainer(Transformer(mcfg), CausalLMObjective(), loader, cfg, out, model_cfg=mcfg)
        for t in trainers.values():  # warm-up (allocation, compilation)
            t.train_step()
            t.train_step()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
        for _ in range(steps):
            for name, t in trainers.items():
                times[name].append(timed(t.train_step))
    how = "compiled" if compile_ else "eager"
    print(f"arch {ARCH}, fp32, {threads} threads, whole Trainer steps ({how}), {steps} interleaved each")
    best_and_median(times, "baseline", ARCH["batch"] * ARCH["seq"])


def run_child(which: str, args) -> list[float]:
    child = "hf" if which == "hf" else "lmforge"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        child,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--model",
        args.model,
    ]
    if which == "lmforge+compile":
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
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    p.add_argument("--compile", action="store_true", help="lmforge with torch.compile")
    p.add_argument(
        "--interleaved", action="store_true", help="forward+backward only, one process, best and median of N"
    )
    p.add_argument(
        "--options", action="store_true", help="tokens/s of each learning-efficiency option vs the baseline"
    )
    p.add_argument(
        "--model",
        choices=sorted(SHAPES),
        default="small",
        help="small: 6 layers x 256 (default); demo: the shakespeare recipe's 4 layers x 128, micro-batch 8",
    )
    p.add_argument("--child", choices=["lmforge", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    ARCH.clear()
    ARCH.update(SHAPES[args.model])
    if args.interleaved:
        interleaved(args.steps, args.threads)
        return 0
    if args.options:
        options(args.steps, args.threads, args.compile)
        return 0
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        tps = (
            child_lmforge(args.steps, args.warmup, args.compile)
            if args.child == "lmforge"
            else child_hf(args.steps, args.warmup)
        )
        print(json.dumps(tps))
        return 0
    contenders = ["lmforge", "hf"] + (["lmforge+compile"] if args.compile else [])
    results: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        for which in contenders:
            tps = run_child(which, args)
            results[which] += tps
            print(
                f"round {r + 1}: {which:16s} median {statistics.median(tps):7.0f}  "
                f"best {max(tps):7.0f} tokens/s",
                flush=True,
            )
    print(f"arch {ARCH}, fp32, {args.threads} threads, {args.rounds} rounds x {args.steps} timed steps")
    hf_med, hf_best = statistics.median(results["hf"]), max(results["hf"])
    for which in contenders:
        med, best = statistics.median(results[which]), max(results[which])
        print(
            f"{which:16s} median {med:7.0f} tokens/s ({med / hf_med:.2f}x hf)   "
            f"best step {best:7.0f} tokens/s "
            f"({best / hf_best:.2f}x hf)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
