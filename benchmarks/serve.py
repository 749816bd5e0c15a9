"""Serving benchmark: `lmforge serve` vs `transformers serve` on the same model and the same requests.

    .venv/bin/python benchmarks/serve.py                       # 16 chat requests, 8 clients at a time
    .venv/bin/python benchmarks/serve.py --requests 8 --concurrency 1 --max-tokens 32

One model (random init, 6 layers x 256, vocab 2048 trained on Shakespeare, 512 context) is saved
as an lmforge checkpoint and exported with `lmforge export --format hf`; each server runs in its
own process on 127.0.0.1, one after the other (never both at once), and answers the same chat
requests (greedy, max_tokens fixed) from `concurrency` client threads. Both render the same chat
template, so their greedy replies must be identical: the script checks that (a same-model sanity
check) before it prints completion tokens per second, mean latency and the ratio.
transformers serve runs with its defaults (no continuous batching); lmforge with its defaults
(queue 16, batches of up to 8 equal-settings requests).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

QUESTIONS = [
    "Who speaks first in Hamlet?", "What is the name of the play about a Moorish general?",
    "Continue: To be, or not to be", "Which play has a storm and an island?", "Name a sonnet.",
    "Who is Falstaff?", "Where is Verona?", "What does Lear divide?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(workdir: Path) -> tuple[Path, Path]:
    import torch

    from lmforge.checkpoint.consolidated import save_model_checkpoint
    from lmforge.data.embedded import embedded_documents
    from lmforge.model.config import ModelConfig
    from lmforge.model.convert import export_hf
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    texts = [t[:200_000] for _, t in embedded_documents("shakespeare")[:4]]
    tok = Tokenizer.train(texts, vocab_size=2048, workers=1, progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=6, d_model=256, n_head=8, max_seq_len=512, init_std=0.05)
    model = Transformer(cfg).eval()
    ckpt = save_model_checkpoint(model, tok, workdir / "ckpt")
    hf = export_hf(model, tok, workdir / "hf")
    return ckpt, hf


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:  # (transformers: /v1/models needs an HF cache)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


def run_load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    def one(i: int):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        data = r.json()
        return time.perf_counter() - t0, data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]

    one(0)  # warm-up (first-request compilation / lazy loading)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    return {
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "mean_latency_s": statistics.mean(r[0] for r in results),
        "texts": [r[1] for r in results],
    }


def serve(cmd: list[str], url: str, model: str, args, env=None) -> dict:
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_ready(url, proc)
        except SystemExit:
            log.seek(0)
            print(f"{cmd[0]} log:\n{log.read()[-3000:]}", file=sys.stderr)
            raise
        return run_load(url, model, args.requests, args.concurrency, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-continuous-batching", action="store_true", help="transformers serve --continuous-batching")
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, hf = build(Path(tmp))
        port = free_port()
        ours = serve(
            [str(bindir / "lmforge"), "serve", "--model", str(ckpt), "--port", str(port), "--model-name", "m"],
            f"http://127.0.0.1:{port}", "m", args,
        )
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        theirs = serve(
            [str(bindir / "transformers"), "serve", str(hf), "--port", str(port)]
            + (["--continuous-batching"] if args.hf_continuous_batching else []),
            f"http://127.0.0.1:{port}", str(hf), args, env=env,
        )
    same = sum(a == b for a, b in zip(ours["texts"], theirs["texts"]))
    cb = ", transformers with continuous batching" if args.hf_continuous_batching else ""
    print(f"requests {args.requests}, concurrency {args.concurrency}, max_tokens {args.max_tokens}, greedy{cb}")
    print(f"identical greedy replies: {same}/{args.requests}")
    for name, r in (("lmforge serve", ours), ("transformers serve", theirs)):
        print(
            f"{name:20s} {r['completion_tokens']:5d} tokens in {r['wall_s']:6.2f} s = {r['tokens_per_s']:7.1f} tok/s,"
            f" mean latency {r['mean_latency_s']:.2f} s"
        )
    print(f"throughput ratio lmforge / transformers: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "texts"} for k, r in (("lmforge", ours), ("transformers", theirs))}))
    return 0 if same == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
