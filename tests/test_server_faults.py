"""The server under hostile input and load, on a live uvicorn server on 127.0.0.1: huge and deeply
nested bodies, unknown models, slow tokenising, 200 concurrent requests. It stays responsive and
never answers 5xx. `pytest -s` prints the figures (docs/BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest

from serve_common import live_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from lmforge.serve.config import ServerConfig  # noqa: E402

MB = 1 << 20
HEALTH_BUDGET_S = 0.1


ROUNDS = 3  # a shared box can stall any thread past the budget once; a blocked event loop fails every round


def health_latencies_while(url: str, busy: threading.Thread) -> list[float]:
    """Poll GET /health on one connection for as long as `busy` runs; -> each answer's latency."""
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as h:
        busy.start()
        while busy.is_alive():
            t0 = time.perf_counter()
            assert h.get("/health").json()["status"] == "ok"
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.005)
    busy.join()
    return latencies


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        t0 = time.perf_counter()
        out["response"] = fn()
        out["seconds"] = time.perf_counter() - t0

    return threading.Thread(target=run), out


def refuse_while_polling(url: str, send, status: int, code: str, what: str) -> None:
    """Run `send()` (a request the server must refuse with `status`/`code`) while polling /health,
    up to ROUNDS times, until every /health answer of a round came within the budget."""
    worst = []
    for _ in range(ROUNDS):
        busy, out = in_thread(send)
        latencies = health_latencies_while(url, busy)
        r = out["response"]
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text[:200]
        worst.append(max(latencies))
        print(
            f"\n{what} refused with {status} in {out['seconds']:.3f} s; /health during it: "
            f"{len(latencies)} answers, max {worst[-1] * 1000:.1f} ms"
        )
        if worst[-1] < HEALTH_BUDGET_S:
            return
    pytest.fail(f"/health was slower than {HEALTH_BUDGET_S} s in every round: {worst}")


def huge_prompt_body(nbytes: int) -> bytes:
    return json.dumps({"prompt": "x" * nbytes, "max_tokens": 1}).encode()


def post(url: str, content) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions", content=content, headers={"Content-Type": "application/json"}, timeout=60
    )


def test_a_20mb_body_gets_413_while_health_answers_fast():
    """Over --max-request-bytes: 413 whether the size is declared (Content-Length) or only
    discovered while reading (chunked upload); /health keeps answering within 100 ms."""
    body = huge_prompt_body(20 * MB)

    def chunked():
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    with live_server(ServerConfig(model_name="tiny")) as (url, _, _):
        refuse_while_polling(
            url, lambda: post(url, body), 413, "request_too_large", "20 MB body (declared size)"
        )
        refuse_while_polling(
            url, lambda: post(url, chunked()), 413, "request_too_large", "20 MB body (chunked)"
        )
        with httpx.Client(base_url=url) as h:
            assert h.post("/v1/completions", json={"prompt": "fine", "max_tokens": 2}).status_code == 200


def test_a_20mb_prompt_under_a_high_limit_is_refused_off_the_event_loop():
    """With the limit raised above 20 MB the body is read, parsed on a worker thread and the prompt
    refused as too long for the context without tokenising it: 400, while /health keeps answering
    within 100 ms (before, tokenising on the event loop blocked everything for about 4 s)."""
    with live_server(ServerConfig(model_name="tiny", max_request_bytes=64 * MB)) as (url, _, _):
        body = huge_prompt_body(20 * MB)
        what = "20 MB prompt (limit 64 MB)"
        refuse_while_polling(url, lambda: post(url, body), 400, "context_length_exceeded", what)


def test_tokenising_runs_off_the_event_loop():
    """A tokeniser that takes a second does not hold up /health."""
    with live_server(ServerConfig(model_name="tiny")) as (url, _, app):
        service = app.state.service
        fast = service.served.encode

        def slow_encode(text):
            time.sleep(1.0)
            return fast(text)

        service.served = replace(service.served, encode=slow_encode)
        busy, out = in_thread(
            lambda: httpx.post(url + "/v1/completions", json={"prompt": "To be", "max_tokens": 2})
        )
        latencies = health_latencies_while(url, busy)
        assert out["response"].status_code == 200 and out["seconds"] >= 1.0
        assert len(latencies) >= 5 and max(latencies) < HEALTH_BUDGET_S


def test_nested_malformed_and_unknown_model_requests_are_4xx_on_a_live_connection():
    with live_server(ServerConfig(model_name="tiny")) as (url, _, _):
        with httpx.Client(base_url=url, timeout=30) as h:
            for path in ("/v1/completions", "/v1/chat/completions"):
                for raw in (
                    b"[" * 100_000,
                    b'{"prompt": ' * 50_000,
                    b"{bad",
                    b'{"messages": [' + b"{" * 50_000,
                ):
                    r = h.post(path, content=raw, headers={"Content-Type": "application/json"})
                    assert r.status_code == 400 and r.json()["error"]["message"], (
                        path,
                        raw[:20],
                        r.text[:200],
                    )
            assert h.get("/health").json()["status"] == "ok"  # the same connection is still open
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for name in ("../../etc/passwd", "gpt-4o", "TINY"):
            with pytest.raises(openai.NotFoundError) as e:
                client.completions.create(model=name, prompt="x", max_tokens=1)
            assert e.value.code == "model_not_found"
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "x"}], max_tokens=1
                )
        assert client.completions.create(model="tiny", prompt="x", max_tokens=1).choices


def load_test_requests() -> list[tuple[str, str, bytes, int | None]]:
    """200 requests: (kind, path, body, the 4xx it must get or None for served-or-429)."""
    good_completion = json.dumps({"model": "tiny", "prompt": "To be", "max_tokens": 4, "temperature": 0})
    good_chat = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    stream_chat = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    )
    kinds = [
        ("completion", "/v1/completions", good_completion.encode(), None),
        ("chat", "/v1/chat/completions", good_chat.encode(), None),
        ("stream", "/v1/chat/completions", stream_chat.encode(), None),
        ("oversized", "/v1/completions", huge_prompt_body(100_000), 413),
        ("malformed", "/v1/completions", b'{"prompt": "x"', 400),
        ("nested", "/v1/chat/completions", b"[" * 50_000, 400),
        (
            "unknown model",
            "/v1/completions",
            json.dumps({"model": "../../etc/passwd", "prompt": "x"}).encode(),
            404,
        ),
    ]
    weights = [50, 40, 30, 20, 20, 20, 20]  # 200 in all
    return [kinds[i] for i, w in enumerate(weights) for _ in range(w)]


def test_200_concurrent_requests_no_5xx_and_the_server_stays_up():
    requests = load_test_requests()
    assert len(requests) == 200
    config = ServerConfig(model_name="tiny", max_queue=16, max_request_bytes=64 * 1024)
    with live_server(config) as (url, _, _):

        async def one(client, kind, path, body, must):
            r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            if r.status_code == 200 and kind == "stream":
                assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
            return kind, must, r.status_code

        async def load():
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
                return await asyncio.gather(*(one(client, *req) for req in requests))

        t0 = time.perf_counter()
        results = asyncio.run(load())
        wall = time.perf_counter() - t0
        codes = Counter(status for _, _, status in results)
        print(
            f"\n200 concurrent requests in {wall:.1f} s: "
            + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))
        )
        assert not [s for s in codes if s >= 500]
        for kind, must, status in results:
            assert status == must if must is not None else status in (200, 429), (kind, status)
        assert codes[200] > 0
        with httpx.Client(base_url=url, timeout=30) as h:
            health = h.get("/health").json()
            assert health["status"] == "ok" and health["load"] == 0
            assert h.post("/v1/completions", json={"prompt": "still up", "max_tokens": 2}).status_code == 200
