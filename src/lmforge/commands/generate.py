"""Generate text with a trained model (KV cache; temperature, top-k, top-p, seed, stop strings).

One --prompt streams its completion to the terminal (the prompt first, then the new text as it
is made; a summary line goes to stderr). --prompts-file runs many prompts in batches and writes
one JSON line per prompt ({"prompt", "completion", "finish_reason", "prompt_tokens",
"completion_tokens", "token_ids"}) to stdout or --out. The file holds one prompt per line, or, when it ends in
.jsonl / .json, one JSON object per line with a "prompt" key (use that for multi-line prompts).

A text prompt starts a document (the token shards put <|eos|> before every document); an empty
--prompt "" samples from scratch. Generation stops at <|eos|> or the turn end <|end|> (as the
exported Hugging Face and GGUF models do), a --stop string (none of them printed), or
--max-new-tokens. A prompt longer than the model's context keeps its last tokens (a warning).

examples:
  lmforge generate --model runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200
  lmforge generate --model runs/shakespeare --prompt "" --temperature 0 --stop "\\n\\n"
  lmforge generate --model runs/shakespeare/pretrain --prompts-file prompts.txt --seed 0 --out out.jsonl
  lmforge generate --model runs/shakespeare --prompts-file prompts.txt --compile   # compiled decode step
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lmforge.errors import LmforgeError


def add_sampling_arguments(p: argparse.ArgumentParser, temperature: float, max_new_tokens: int) -> None:
    """The model and sampling options shared by `generate` and `chat`."""
    p.add_argument(
        "--model", required=True, help="checkpoint, stage or run directory (its latest checkpoint)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help="tokens to generate at most (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help="sampling temperature; 0 = greedy (default: %(default)s)",
    )
    p.add_argument(
        "--top-k", type=int, default=50, help="keep the k most likely tokens; 0 = off (default: %(default)s)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        help="nucleus: keep the top tokens with this mass; 1 = off (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed: same seed, same text (default: random)"
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="stop string (\\n = newline); repeat for several (default: none)",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ...; auto = cuda if available (default: auto)"
    )
    p.add_argument(
        "--dtype", default="", help="float32, bfloat16 or float16 (default: the checkpoint's, float32)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with a torch.compile'd step: faster per token after a one-time compile "
        "(tens of seconds on a CPU, reported on stderr)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (streamed to the terminal)")
    src.add_argument("--prompts-file", help="a file of prompts: one per line, or JSONL with a 'prompt' key")
    add_sampling_arguments(p, temperature=0.8, max_new_tokens=128)
    p.add_argument(
        "--batch-size", type=int, default=32, help="prompts decoded together (default: %(default)s)"
    )
    p.add_argument("--out", default="", help="with --prompts-file: write the JSONL here (default: stdout)")


def load_engine(args: argparse.Namespace):
    """(Engine, SamplingParams) from the shared options."""
    import torch

    from lmforge.checkpoint.consolidated import load_model
    from lmforge.inference import Engine, SamplingParams

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None
    if args.dtype:
        dtype = getattr(torch, args.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise LmforgeError(f"--dtype {args.dtype!r}: expected float32, bfloat16 or float16")
    model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=[unescape(s) for s in args.stop],
        stop_token_ids=end_of_text_ids(tokenizer),
    )
    engine = Engine(model, tokenizer, max_batch_size=getattr(args, "batch_size", 32), compile=args.compile)
    return engine, params


def end_of_text_ids(tokenizer) -> list[int]:
    """<|eos|> and <|end|>: a document or a chat turn ends there, so a completion does too."""
    from lmforge.tokenizer.tokenizer import END, EOS

    return [tokenizer.special_ids[s] for s in (EOS, END) if s in tokenizer.special_ids]


def unescape(text: str) -> str:
    """`\\n` and `\\t` typed in a shell argument mean newline and tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per line, blank lines skipped) or a JSONL file."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{p}: cannot read the prompts file ({e})") from None
    if p.suffix not in (".jsonl", ".json"):
        return [line for line in lines if line.strip()]
    from lmforge.data.documents import iter_jsonl

    prompts = []
    for n, obj in iter_jsonl(p):
        if not isinstance(obj.get("prompt"), str):
            raise LmforgeError(f'{p}:{n}: expected an object with a string "prompt" key')
        prompts.append(obj["prompt"])
    return prompts


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.prompts_file is not None:
        prompts = read_prompts(args.prompts_file)
        if not prompts:
            raise LmforgeError(f"{args.prompts_file}: no prompts in the file")
    engine, params = load_engine(args)
    if args.prompts_file is None:
        return stream_one(engine, params, args.prompt)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params, progress=True)
    lines = [
        json.dumps(
            {
                "prompt": prompt,
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "token_ids": c.token_ids,
            },
            ensure_ascii=False,
        )
        for prompt, c in zip(prompts, outs)
    ]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        from lmforge.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    n = sum(c.completion_tokens for c in outs)
    dt = time.perf_counter() - t0
    summary = f"{len(outs)} prompts, {n} tokens in {dt:.1f}s, {n / dt:.1f} tokens/s{compiled(engine)}"
    print(f"[{summary}]", file=sys.stderr)
    return 0


def stream_one(engine, params, prompt: str) -> int:
    t0 = time.perf_counter()
    sys.stdout.write(prompt)
    sys.stdout.flush()
    stream = engine.stream(prompt, params)
    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    c = stream.completion
    dt = time.perf_counter() - t0
    print(
        f"[{c.completion_tokens} tokens, {c.completion_tokens / dt:.1f} tokens/s, finish: {c.finish_reason}"
        f"{compiled(engine)}]",
        file=sys.stderr,
    )
    return 0


def compiled(engine) -> str:
    """The summary's note of the compile time, which the tokens/s figure includes."""
    return f", including {engine.compile_seconds:.1f}s compiling" if engine.compile_seconds else ""
