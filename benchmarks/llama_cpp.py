"""CPU decode benchmark: lmforge's Engine (eager and compiled) vs llama.cpp on the same weights.

llama.cpp is the CPU-inference anchor. One randomly initialised lmforge model is exported with
`lmforge.model.gguf.export_gguf` in f32 and q8_0; llama.cpp's `llama-bench` decodes --new-tokens
tokens one at a time after a --prompt-len context (its `-p 0 -n N -d P` test, --rounds repetitions
after its own warm-up), with --threads threads. lmforge decodes the same number of tokens with the
KV cache, greedy, batch 1, in fp32 (it has no int8 kernels: its row is the same for both files),
eager and with `--compile` (`Engine(compile=True)`, compiled once before timing), on --threads
torch threads. lmforge's decode tokens/s excludes the prefill the same way: (N - 1) / (time of an
N-token generate - time of a 1-token generate), medians over --rounds, interleaved with llama.cpp's
runs so that both see the same machine load.

The GGUF tokenizer is a small BPE trained on the plays; the model's vocabulary is padded to --vocab
(placeholder tokens), so the head costs what a real vocabulary's does. Needs llama.cpp's tools:
`make llama-cpp` (scripts/build_llama_cpp.sh) or LLAMA_CPP_BIN=DIR; without them only lmforge runs.

usage:
  .venv/bin/python benchmarks/llama_cpp.py                        # both models, 2 threads
  .venv/bin/python benchmarks/llama_cpp.py --models small --new-tokens 64 --rounds 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from generate import ByteTable  # benchmarks/generate.py: one byte per id, for random ids

from lmforge.inference import Engine, SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.gguf import export_gguf
from lmforge.model.transformer import Transformer

MODELS = {
    "small": dict(n_layer=6, d_model=256, n_head=8),
    "124m-shallow": dict(n_layer=4, d_model=768, n_head=12, d_ff=2048),
}


def llama_cpp_tool(name: str) -> Path | None:
    """`name` from $LLAMA_CPP_BIN, else the newest build in the cache folder of scripts/build_llama_cpp.sh."""
    if os.environ.get("LLAMA_CPP_BIN"):
        path = Path(os.environ["LLAMA_CPP_BIN"]) / name
        return path if path.is_file() else None
    cache = os.environ.get("LMFORGE_CACHE", str(Path.home() / ".cache" / "lmforge"))
    found = sorted(glob.glob(f"{cache}/llama.cpp-*/bin/{name}"))
    return Path(found[-1]) if found else None


def small_tokenizer():
    from lmforge.data.embedded import embedded_documents
    from lmforge.tokenizer import Tokenizer

    plays = [text[:50_000] for _, text in embedded_documents("shakespeare")[:2]]
    return Tokenizer.train(plays, vocab_size=512, workers=1, progress=False)


def llama_bench(tool: Path, gguf_path: Path, args) -> float:
    """llama-bench's mean decode tokens/s for --new-tokens tokens after --prompt-len of context."""
    cmd = [str(tool), "-m", str(gguf_path), "-p", "0", "-n", str(args.new_tokens), "-d", str(args.prompt_len),
           "-t", str(args.threads), "-r", "1", "-o", "jsonl"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise SystemExit(f"llama-bench failed:\n{res.stderr[-2000:]}")
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return float(rows[-1]["avg_ts"])


def lmforge_decode(engine: Engine, prompt: list[int], n: int) -> float:
    """Seconds of decoding n - 1 tokens after the prefill: an n-token call minus a 1-token call."""
    def call(k: int) -> float:
        params = SamplingParams(max_new_tokens=k, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        engine.generate([prompt], params)
        return time.perf_counter() - t0

    return call(n) - call(1)


def bench(name: str, tok, workdir: Path, tool: Path | None, args) -> dict:
    torch.manual_seed(0)
    context = args.prompt_len + args.new_tokens + 8
    cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=context, **MODELS[name])
    model = Transformer(cfg).eval()
    files = {dtype: export_gguf(model, tok, workdir / f"{name}-{dtype}.gguf", dtype=dtype, force=True)
             for dtype in ("f32", "q8_0")}
    # The engines detokenise with a table that knows every padded id (the tokenizer does not).
    engines = {"eager": Engine(model, ByteTable(), max_batch_size=1),
               "compiled": Engine(model, ByteTable(), max_batch_size=1, compile=True)}
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, tok.vocab_size, (args.prompt_len,), generator=g).tolist()
    for engine in engines.values():  # warm-up; compiles the decode step
        lmforge_decode(engine, prompt, args.new_tokens)
    seconds: dict[str, list[float]] = {k: [] for k in engines}
    ts: dict[str, list[float]] = {k: [] for k in files} if tool else {}
    for _ in range(args.rounds):
        for label, engine in engines.items():
            seconds[label].append(lmforge_decode(engine, prompt, args.new_tokens))
        for dtype in ts:
            ts[dtype].append(llama_bench(tool, files[dtype], args))
    row = {"model": name, "params_M": round(model.num_params() / 1e6, 1)}
    for label, s in seconds.items():
        row[f"lmforge_{label}"] = round((args.new_tokens - 1) / statistics.median(s), 1)
    for dtype, values in ts.items():
        row[f"llama.cpp_{dtype}"] = round(statistics.median(values), 1)
    if ts:
        for label in engines:
            row[f"{label}/llama.cpp_f32"] = f"{row[f'lmforge_{label}'] / row['llama.cpp_f32']:.2f}x"
    row["compile_s"] = round(engines["compiled"].compile_seconds, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,124m-shallow")
    ap.add_argument("--vocab", type=int, default=4096, help="model vocabulary (padded beyond the tokenizer)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads and llama.cpp threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tool = llama_cpp_tool("llama-bench")
    if tool is None:
        print("llama.cpp's llama-bench is not built (make llama-cpp): measuring lmforge only")
    tok = small_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(name, tok, Path(tmp), tool, args) for name in args.models.split(",")]
    print(f"decode tokens/s, batch 1, {args.threads} threads, "
          f"{args.new_tokens} tokens after {args.prompt_len}")
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
