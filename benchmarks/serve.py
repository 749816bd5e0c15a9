"""Serving benchmark: continuous batching vs one request at a time, and lmforge vs transformers serve.

    .venv/bin/python benchmarks/serve.py                          # --max-batch 32 vs --max-batch 1
    .venv/bin/python benchmarks/serve.py --clients 1,8 --max-tokens 16
    .venv/bin/python benchmarks/serve.py --against-transformers   # the same requests to `transformers serve`

One model (random init, 6 layers x 256, vocab 2048 trained on Shakespeare, 512 context) is saved
as an lmforge checkpoint; each server runs in its own process on 127.0.0.1, one after the other
(never two at once). At each level of concurrency, that many client threads send greedy chat
requests (8 distinct questions, cycled; `max_tokens` fixed, `ignore_eos` so every reply has that
length), `requests-per-client` each, and the script prints requests/s, completion tokens/s and the
p50/p99 latency per request. Default: `lmforge serve --max-batch 32` (continuous batching: the
concurrent requests share decode steps) against `--max-batch 1` (one request at a time, as the
server ran before continuous batching); the greedy replies of both must be identical (checked).
`--against-transformers` instead compares lmforge (default settings) with `transformers serve` on
the `lmforge export --format hf` of the same weights (same chat template, same greedy replies).
The host's load average is printed with the figures: on a shared box, say so when quoting them.
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
    "Who speaks first in Hamlet?",
    "What is the name of the play about a Moorish general?",
    "Continue: To be, or not to be",
    "Which play has a storm and an island?",
    "Name a sonnet.",
    "Who is Falstaff?",
    "Where is Verona?",
    "What does Lear divide?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(workdir: Path, with_hf: bool) -> tuple[Path, Path | None]:
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
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=6, d_model=256, n_head=8, max_seq_len=512, init_std=0.05
    )
    model = Transformer(cfg).eval()
    ckpt = save_model_checkpoint(model, tok, workdir / "ckpt")
    return ckpt, (export_hf(model, tok, workdir / "hf") if with_hf else None)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if (
                httpx.get(url + "/health", timeout=2).status_code == 200
            ):  # (transformers: /v1/models needs an HF cache)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_load(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    def one(i: int):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        data = r.json()
        return (
            time.perf_counter() - t0,
            data["choices"][0]["message"]["content"],
            data["usage"]["completion_tokens"],
        )

    n = clients * per_client
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    latencies = [r[0] for r in results]
    return {
        "clients": clients,
        "requests": n,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "texts": [r[1] for r in results],
    }


def measure(cmd: list[str], url: str, model: str, args, env=None) -> list[dict]:
    """Start the server, warm it up, run every concurrency level, stop it."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_ready(url, proc)
        except SystemExit:
            log.seek(0)
            print(f"{cmd[0]} log:\n{log.read()[-3000:]}", file=sys.stderr)
            raise
        run_load(url, model, 1, 1, args.max_tokens)  # warm-up (first-request allocation / lazy loading)
        return [run_load(url, model, c, args.requests_per_client, args.max_tokens) for c in args.clients]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def lmforge_cmd(ckpt: Path, port: int, extra: list[str]) -> list[str]:
    bindir = Path(sys.executable).parent
    base = [str(bindir / "lmforge"), "serve", "--model", str(ckpt), "--port", str(port), "--model-name", "m"]
    return base + extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--clients", default="1,8,32", help="concurrency levels, comma-separated (default: 1,8,32)"
    )
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32, help="lmforge's running batch (default: 32)")
    ap.add_argument("--against-transformers", action="store_true", help="compare with `transformers serve`")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    queue = str(max(args.clients) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, hf = build(Path(tmp), args.against_transformers)
        runs = {}
        if args.against_transformers:
            port = free_port()
            runs["lmforge serve"] = measure(
                lmforge_cmd(ckpt, port, ["--max-queue", queue]), f"http://127.0.0.1:{port}", "m", args
            )
            port = free_port()
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
            cmd = [str(Path(sys.executable).parent / "transformers"), "serve", str(hf), "--port", str(port)]
            runs["transformers serve"] = measure(cmd, f"http://127.0.0.1:{port}", str(hf), args, env=env)
        else:
            for label, batch in ((f"--max-batch {args.max_batch}", args.max_batch), ("--max-batch 1", 1)):
                port = free_port()
                cmd = lmforge_cmd(ckpt, port, ["--max-queue", queue, "--max-batch", str(batch)])
                runs[label] = measure(cmd, f"http://127.0.0.1:{port}", "m", args)
    (a, ra), (b, rb) = runs.items()
    same = all(x["texts"] == y["texts"] for x, y in zip(ra, rb))
    load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    print(
        f"greedy chat, max_tokens {args.max_tokens}, {args.requests_per_client} requests per client; {load}"
    )
    print(f"identical greedy replies: {same}")
    print(f"{'server':22s} {'clients':>7s} {'req/s':>7s} {'tok/s':>8s} {'p50 s':>7s} {'p99 s':>7s}")
    for name, levels in runs.items():
        for r in levels:
            print(
                f"{name:22s} {r['clients']:7d} {r['requests_per_s']:7.2f} {r['tokens_per_s']:8.1f}"
                f" {r['p50_s']:7.2f} {r['p99_s']:7.2f}"
            )
    for x, y in zip(ra, rb):
        ratio = x["requests_per_s"] / y["requests_per_s"]
        print(f"clients {x['clients']:3d}: requests/s {a} / {b} = {ratio:.2f}x")
    print(
        json.dumps(
            {
                k: [{kk: v for kk, v in r.items() if kk != "texts"} for r in levels]
                for k, levels in runs.items()
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
