"""Serve a model over an OpenAI-compatible HTTP API, with a web chat page at `/`.

Endpoints: /v1/models (and /v1/models/ID), /v1/completions, /v1/chat/completions (streaming with
"stream": true), /health, /livez (liveness only) and the chat page at http://HOST:PORT/. Binds
127.0.0.1 unless told otherwise; with --api-key (or LMFORGE_API_KEY) every endpoint but /livez and
the page's files needs `Authorization: Bearer KEY` (the page asks for it). Requests naming another model
than --model-name get 404; bodies over --max-request-bytes get 413; requests beyond --max-queue
(waiting + running) get 429. Concurrent requests share decode steps (continuous batching): up to
--max-batch sequences run together and a new request joins the running batch at its next step;
--max-batch 1 runs them one at a time. Completions take logprobs and echo (lm-eval's
local-completions scores through it), chat takes logprobs and top_logprobs.

examples:
  lmforge serve --model runs/shakespeare
  lmforge serve --model runs/shakespeare/sft --port 8080 --api-key secret
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Who is Hamlet?"}]}'
  python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='x'); \\
             m = c.models.list().data[0].id; \\
             print(c.completions.create(model=m, prompt='To be', max_tokens=20).choices[0].text)"
"""

from __future__ import annotations

import argparse
import os

from lmforge.serve.config import ServerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint, stage or run directory")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key", default=None, help="require this bearer key (default: $LMFORGE_API_KEY, else none)"
    )
    p.add_argument(
        "--model-name", default="", help="id reported by /v1/models (default: the checkpoint's run name)"
    )
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting + running before 429 (default: 16)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="sequences decoded together (continuous batching; 1 = one at a time; default: 8)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=ServerConfig.max_request_bytes,
        help=f"larger request bodies get 413 (default: {ServerConfig.max_request_bytes}, 1 MiB)",
    )
    p.add_argument("--device", default="", help="cpu, cuda, mps (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="", help="float32|float16|bfloat16 (default: the checkpoint's)")


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint
    from lmforge.errors import LmforgeError
    from lmforge.serve.app import serve

    dtypes = {"": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if args.dtype not in dtypes:
        raise LmforgeError(f"--dtype must be one of float32, float16, bfloat16; got {args.dtype!r}")
    if args.max_queue < 1 or args.max_batch < 1 or args.max_request_bytes < 1:
        raise LmforgeError("--max-queue, --max-batch and --max-request-bytes must be at least 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = resolve_checkpoint(args.model)
    model, tokenizer = load_model(ckpt, device=device, dtype=dtypes[args.dtype])
    name = args.model_name or _run_name(ckpt)
    config = ServerConfig(
        model_name=name,
        api_key=args.api_key or os.environ.get("LMFORGE_API_KEY") or None,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_request_bytes=args.max_request_bytes,
    )
    print(f"serving {ckpt} as {name!r} on http://{args.host}:{args.port}/ (chat page at /, API at /v1)")
    serve(model, tokenizer, host=args.host, port=args.port, config=config)
    return 0


def _run_name(ckpt) -> str:
    """runs/NAME/STAGE/checkpoints/step_N -> NAME-STAGE; DIR/checkpoints/step_N -> DIR; else the dir name."""
    if ckpt.parent.name != "checkpoints":
        return ckpt.name
    stage_dir = ckpt.parent.parent
    if stage_dir.name in ("pretrain", "sft", "dpo", "reward", "rl"):
        return f"{stage_dir.parent.name}-{stage_dir.name}"
    return stage_dir.name
