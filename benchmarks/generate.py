"""Decode benchmark: lmforge's Engine (eager and compiled) vs transformers' `generate`, same weights.

All three run greedy decoding with a KV cache for exactly --new-tokens tokens from the same
prompts (random ids of --prompt-len tokens, one per batch row), in this process, interleaved
round by round so all see the same machine load. "compiled" is `Engine(..., compile=True)`
(`lmforge.inference.static_decode`): its first call compiles the decode step, which is paid
once per process and shape; that time is printed in its own column, never in tokens/s. The
weights are one randomly initialised lmforge Transformer, copied into a transformers
LlamaForCausalLM through the interop converter (`lmforge.model.convert`, a 1:1 name mapping);
the greedy tokens of both are compared.

tokens/s = batch x new tokens / wall time of one whole generate call (prefill included; the
prompts are short). Each figure is the median of --rounds calls after one warm-up call (the
compiling one). On a machine shared with other jobs, wall time swings with their load, so the
ratios of the CPU time each generate call used (time.process_time, the same calls) are printed
beside the wall-time ones. Inductor compiles in worker processes, so CPU time would not show the
compile: its column is wall time.

Models: `small` = 6 layers, width 256, 8 heads, vocab 4096; `124m-shallow` = the GPT-2-small
shape (width 768, 12 heads, MLP 2048, vocab 50304) with 4 layers instead of 12.

usage:
  .venv/bin/python benchmarks/generate.py                        # both models, batch 1 and 8, 1 thread
  .venv/bin/python benchmarks/generate.py --models small --batch-sizes 1 --threads 2
  .venv/bin/python benchmarks/generate.py --device cuda --new-tokens 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmforge.inference import Engine, SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.convert import hf_config, to_hf_state_dict
from lmforge.model.transformer import Transformer

MODELS = {
    "small": dict(n_layer=6, d_model=256, n_head=8, vocab_size=4096),
    "124m-shallow": dict(n_layer=4, d_model=768, n_head=12, d_ff=2048, vocab_size=50304),
}


class ByteTable:
    """The detokenizer side of a Tokenizer for a vocabulary of random ids: each id is one byte."""

    eos_id = None

    def id_to_bytes(self, token_id: int) -> bytes:
        return bytes([32 + token_id % 90])


def build(name: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(max_seq_len=1024, **MODELS[name])
    ours = Transformer(cfg).eval()
    hf = LlamaForCausalLM(LlamaConfig(**hf_config(cfg))).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and all("rotary" in k or k == "lm_head.weight" for k in missing), (
        missing,
        unexpected,
    )
    hf.tie_weights()
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return ours.to(device, dtype), hf.to(device, dtype), cfg


def timed(fn) -> tuple[float, float, list[list[int]]]:
    """(wall seconds, CPU seconds of this process, result)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench(name: str, batch: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    ours, hf, cfg = build(name, args.device, dtype)
    engine = Engine(ours, ByteTable(), max_batch_size=batch)
    compiled = Engine(ours, ByteTable(), max_batch_size=batch, compile=True)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g)
    prompt_lists = prompts.tolist()
    hf_input = prompts.to(args.device)
    mask = torch.ones_like(hf_input)

    def run_ours():
        return [c.token_ids for c in engine.generate(prompt_lists, params)]

    def run_compiled():
        return [c.token_ids for c in compiled.generate(prompt_lists, params)]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(
                hf_input, attention_mask=mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                do_sample=False, use_cache=True,
            )  # fmt: skip
        return out[:, args.prompt_len :].tolist()

    runs = {"lmforge": run_ours, "compiled": run_compiled, "transformers": run_hf}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    tokens = {}
    for r in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for label, fn in runs.items():
            dt, dc, tokens[label] = timed(fn)
            if r:
                times[label].append(dt)
                cpu[label].append(dc)
    n = batch * args.new_tokens
    tps = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_tps = {k: n / statistics.median(v) for k, v in cpu.items()}

    def same(label: str) -> int:
        return sum(a == b for a, b in zip(tokens[label], tokens["transformers"]))

    hf, hf_cpu = tps["transformers"], cpu_tps["transformers"]
    return {
        "model": name,
        "params_M": round(ours.num_params() / 1e6, 1),
        "batch": batch,
        "eager_tok_s": round(tps["lmforge"], 1),
        "compiled_tok_s": round(tps["compiled"], 1),
        "hf_tok_s": round(hf, 1),
        "compile_s": round(compiled.compile_seconds, 1),
        "eager_ratio": f"{tps['lmforge'] / hf:.2f}x / {cpu_tps['lmforge'] / hf_cpu:.2f}x",
        "compiled_ratio": f"{tps['compiled'] / hf:.2f}x / {cpu_tps['compiled'] / hf_cpu:.2f}x",
        "same_tokens": f"{same('lmforge')}/{batch}, {same('compiled')}/{batch}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,124m-shallow")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, prompt {args.prompt_len}, "
        f"new {args.new_tokens}"
    )
    print(
        "| model | params | batch | lmforge eager tok/s | lmforge compiled tok/s | transformers tok/s "
        "| compile s | eager / transformers (wall / CPU) | compiled / transformers (wall / CPU) "
        "| same greedy tokens as transformers (eager, compiled) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            r = bench(name, batch, args)
            print(
                f"| {r['model']} | {r['params_M']}M | {r['batch']} | {r['eager_tok_s']} "
                f"| {r['compiled_tok_s']} "
                f"| {r['hf_tok_s']} | {r['compile_s']} | {r['eager_ratio']} | {r['compiled_ratio']} "
                f"| {r['same_tokens']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
