"""A live server for the serving tests: the real app under uvicorn on 127.0.0.1 and a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from interop_common import model, tokenizer


@contextlib.contextmanager
def serving(served_model, served_tokenizer, config):
    """-> (base URL, the app) serving `served_model`; the socket is bound before the thread starts."""
    import uvicorn

    from lmforge.serve.app import create_app

    app = create_app(served_model, served_tokenizer, config)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits out the client's delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def live_server(config, **model_kw):
    """-> (base URL, the served model, the app) for a small random model."""
    ours = model(max_seq_len=model_kw.pop("max_seq_len", 96), **model_kw)
    with serving(ours, tokenizer(), config) as (url, app):
        yield url, ours, app
