"""The server's settings (`lmforge serve` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    model_name: str = "lmforge"  # the only model id requests may name
    api_key: str | None = None  # when set, every endpoint but /livez and the page's files needs it
    max_queue: int = 16  # jobs waiting + running; more get 429
    max_batch: int = 8  # sequences in the running (continuous) batch; 1 = one at a time
    max_n: int = 8  # choices per request
    default_max_tokens: int = 256  # chat replies without max_tokens
    max_request_bytes: int = 1 << 20  # larger bodies get 413 before they are parsed
