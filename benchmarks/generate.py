"""Decode benchmark: lmforge's Engine vs transformers' `generate`, same weights, same prompts.

Both run greedy decoding with a KV cache for exactly --new-tokens tokens from the same prompts
(random ids of --prompt-len tokens, one per batch row), in this process, interleaved round by
round so both see the same machine load. The weights are one randomly initialised lmforge
Transformer, copied into a transformers LlamaForCausalLM through the interop converter
(`lmforge.model.convert`, a 1:1 name mapping); the greedy tokens of both are compared.

tokens/s = batch x new tokens / wall time of one whole generate call (prefill included; the
prompts are short). Each figure is the median of --rounds calls after one warm-up call. On a
machine shared with other jobs, wall time swings with their load, so the ratio of the CPU time
each generate call used (time.process_time, the same calls) is printed beside the wall-time one.

Models: `small` = 6 layers, width 256, 8 heads, vocab 4096; `124m-shallow` = the GPT-2-small
shape (width 768, 12 heads, MLP 2048, vocab 50304) with 4 layers instead of 12.

usage:
  .venv/bin/python benchmarks/generate.py                        # both models, batch 1 and 8
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
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g)
    prompt_lists = prompts.tolist()
    hf_input = prompts.to(args.device)
    mask = torch.ones_like(hf_input)

    def run_ours():
        return [c.token_ids for c in engine.generate(prompt_lists, params)]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(
                hf_input, attention_mask=mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                do_sample=False, use_cache=True,
            )  # fmt: skip
        return out[:, args.prompt_len :].tolist()

    times: dict[str, list[float]] = {"lmforge": [], "transformers": []}
    cpu: dict[str, list[float]] = {"lmforge": [], "transformers": []}
    tokens = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for label, fn in (("lmforge", run_ours), ("transformers", run_hf)):
            dt, dc, tokens[label] = timed(fn)
            if r:
                times[label].append(dt)
                cpu[label].append(dc)
    n = batch * args.new_tokens
    tps = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_tps = {k: n / statistics.median(v) for k, v in cpu.items()}
    same = sum(a == b for a, b in zip(tokens["lmforge"], tokens["transformers"]))
    return {
        "model": name,
        "params_M": round(ours.num_params() / 1e6, 1),
        "batch": batch,
        "lmforge_tok_s": round(tps["lmforge"], 1),
        "hf_tok_s": round(tps["transformers"], 1),
        "ratio": round(tps["lmforge"] / tps["transformers"], 2),
        "cpu_ratio": round(cpu_tps["lmforge"] / cpu_tps["transformers"], 2),
        "same_tokens": f"{same}/{batch}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,124m-shallow")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, prompt {args.prompt_len}, new {args.new_tokens}"
    )
    print(
        "| model | params | batch | lmforge tok/s | transformers tok/s | ratio | ratio by CPU time | same greedy tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            r = bench(name, batch, args)
            print(
                f"| {r['model']} | {r['params_M']}M | {r['batch']} | {r['lmforge_tok_s']} | {r['hf_tok_s']} "
                f"| {r['ratio']}x | {r['cpu_ratio']}x | {r['same_tokens']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
