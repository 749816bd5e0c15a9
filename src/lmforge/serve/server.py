"""An OpenAI-compatible HTTP server (FastAPI) for one lmforge model, plus the web chat page at `/`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with
`"stream": true` server-sent events, ending in `data: [DONE]`), GET /health, GET / (chat page).
Parameters: temperature (0-2, 0 = greedy), top_p, max_tokens (chat also max_completion_tokens),
stop (string or up to 4 strings), seed, n (non-streaming), stream_options.include_usage, and the
extensions top_k and ignore_eos (as vLLM names them). Parameters lmforge does not implement (logprobs, echo, best_of > 1, penalties,
logit_bias, tools) are refused with 400 rather than silently ignored; unknown keys are ignored.

Concurrency. One worker thread owns the model (generation is compute bound; one at a time uses
the device best) and takes jobs from a bounded queue. Requests beyond `max_queue` jobs (waiting
plus running) get 429 with Retry-After. Waiting non-streaming requests with the same sampling
settings are batched into one `Engine.generate` call (up to `max_batch` prompts) when that cannot
change their results: greedy ones, or ones without a seed (a seed gives prompt i seed + i, so
seeded requests run alone to stay reproducible). A client that disconnects mid-stream stops
its generation at the next token.

Errors follow OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for invalid
JSON, bad parameters or a prompt that does not fit the context, 401 for a missing/wrong API key,
404 for unknown paths, 429 when the queue is full; an unexpected failure answers 500 and the
server keeps running.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` type of the routes
# defined inside create_app (a string annotation would not resolve there).

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.inference.engine import Completion, Engine
from lmforge.inference.sampling import SamplingParams

log = logging.getLogger("lmforge.server")
STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ServerConfig:
    model_name: str = "lmforge"
    api_key: str | None = None
    max_queue: int = 16  # jobs waiting + running; more get 429
    max_batch: int = 8  # prompts per batched generate call
    max_n: int = 8  # choices per request
    default_max_tokens: int = 256
    compile: bool = False  # Engine(compile=True): a torch.compile'd decode step


# ---------------------------------------------------------------------------------------------
# the generation worker


@dataclass(eq=False)
class Job:
    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None  # non-streaming: list[Completion]
    events: asyncio.Queue | None = None  # streaming: str deltas, then a Completion or an Exception
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batchable(self) -> bool:
        return not self.stream and (self.params.greedy or self.params.seed is None)


class Busy(Exception):
    pass


class Worker:
    """Owns the Engine; runs jobs one batch at a time on a background thread."""

    def __init__(self, engine: Engine, max_queue: int, max_batch: int) -> None:
        self.engine, self.max_queue, self.max_batch = engine, max_queue, max_batch
        self.pending: deque[Job] = deque()
        self.running = 0
        self.stats = {"jobs": 0, "batches": 0}  # batches < jobs when requests were batched
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="lmforge-generate", daemon=True)
        self.thread.start()

    def load(self) -> int:
        with self.cv:
            return len(self.pending) + self.running

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.closed or not self.thread.is_alive():
                raise ApiError(503, "the generation worker is not running")
            if len(self.pending) + self.running >= self.max_queue:
                raise Busy()
            self.pending.append(job)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _take(self) -> list[Job] | None:
        with self.cv:
            while not self.pending and not self.closed:
                self.cv.wait()
            if self.closed:
                return None
            batch = [self.pending.popleft()]
            if batch[0].batchable:
                n = len(batch[0].prompts)
                for other in list(self.pending):
                    if other.batchable and other.params == batch[0].params and n + len(other.prompts) <= self.max_batch:
                        self.pending.remove(other)
                        batch.append(other)
                        n += len(other.prompts)
            self.running = len(batch)
            self.stats["jobs"] += len(batch)
            self.stats["batches"] += 1
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                live = [j for j in batch if not j.cancelled.is_set()]
                if live and live[0].stream:
                    self._run_stream(live[0])
                elif live:
                    self._run_batch(live)
            finally:
                with self.cv:
                    self.running = 0

    def _run_batch(self, jobs: list[Job]) -> None:
        prompts = [p for j in jobs for p in j.prompts]
        try:
            results: list[Completion] | Exception = self.engine.generate(prompts, jobs[0].params)
        except Exception as e:  # delivered to each request as a 500; the worker keeps going
            log.exception("generation failed")
            results = e
        start = 0
        for j in jobs:
            value = results if isinstance(results, Exception) else results[start : start + len(j.prompts)]
            start += len(j.prompts)
            j.loop.call_soon_threadsafe(_resolve, j.future, value)

    def _run_stream(self, job: Job) -> None:
        def put(item) -> None:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)

        stream = None
        try:
            stream = self.engine.stream(job.prompts[0], job.params)
            for delta in stream:
                if job.cancelled.is_set():
                    return
                put(delta)
            put(stream.completion)
        except Exception as e:
            log.exception("generation failed")
            put(e)
        finally:
            if stream is not None:
                stream.close()


def _resolve(future: asyncio.Future, value) -> None:
    if future.done():
        return
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)


# ---------------------------------------------------------------------------------------------
# request validation


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r:.40}", key)
    if value < lo or value > hi or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise ApiError(400, f"'{key}' must be in {left}{lo}, {hi}], got {value}", key)
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (Python's json module would accept it)")


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    return options.get("include_usage", False)


def _refuse_unsupported(body: dict) -> None:
    checks = {
        "logprobs": lambda v: v not in (None, False, 0),
        "top_logprobs": lambda v: v not in (None, 0),
        "echo": lambda v: bool(v),
        "best_of": lambda v: v not in (None, 1),
        "presence_penalty": lambda v: v not in (None, 0, 0.0),
        "frequency_penalty": lambda v: v not in (None, 0, 0.0),
        "logit_bias": lambda v: bool(v),
        "tools": lambda v: bool(v),
        "functions": lambda v: bool(v),
        "suffix": lambda v: bool(v),
    }
    for key, unsupported in checks.items():
        if key in body and unsupported(body[key]):
            raise ApiError(400, f"'{key}' is not supported by this server", key, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "only response_format {'type': 'text'} is supported", "response_format")


def sampling_from_body(body: dict, default_max_tokens: int | None, max_tokens_keys: tuple[str, ...]) -> tuple:
    """-> (SamplingParams without max_new_tokens settled, explicit max_tokens or None, n, stream)."""
    _refuse_unsupported(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _number(body, "top_k", 0, 0, 1_000_000, integer=True)
    seed = _number(body, "seed", None, -(2**62), 2**62, integer=True)
    max_tokens = None
    for key in max_tokens_keys:
        if body.get(key) is not None:
            max_tokens = _number(body, key, None, 1, 10**9, integer=True)
    n = _number(body, "n", 1, 1, 10**6, integer=True)
    stream, ignore_eos = body.get("stream", False), body.get("ignore_eos", False)
    if not isinstance(stream, bool) or not isinstance(ignore_eos, bool):
        raise ApiError(400, "'stream' and 'ignore_eos' must be true or false", "stream")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    params = SamplingParams(
        max_new_tokens=max_tokens or default_max_tokens or 1,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
    )
    return params, max_tokens, n, stream


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", "messages")
        role, content = m.get("role"), m.get("content")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {role!r:.40}", "messages")
        if isinstance(content, list):  # content parts: only text
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", "messages")
        out.append({"role": role, "content": content})
    return out


# ---------------------------------------------------------------------------------------------
# the app


def create_app(model, tokenizer, config: ServerConfig | None = None):
    """The FastAPI app serving `model`; generation runs on one background worker thread."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    config = config or ServerConfig()
    engine = Engine(model, tokenizer, max_batch_size=config.max_batch, compile=config.compile)
    worker = Worker(engine, config.max_queue, config.max_batch)
    ctx = model.cfg.max_seq_len
    created = int(time.time())
    end_id = tokenizer.special_ids.get("<|end|>")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.state.config = config

    def error_response(e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error_response(ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(ApiError(400, str(e)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error")
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    def authorize(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def settle_max_tokens(params: SamplingParams, explicit: int | None, prompt_len: int, default: int | None):
        if prompt_len >= ctx:
            raise ApiError(
                400,
                f"the prompt has {prompt_len} tokens; this model's context is {ctx} tokens",
                "messages" if default is None else "prompt",
                "context_length_exceeded",
            )
        room = ctx - prompt_len
        if explicit is not None and explicit > room:
            raise ApiError(
                400,
                f"prompt ({prompt_len} tokens) + max_tokens ({explicit}) exceeds the context of {ctx} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        return replace(params, max_new_tokens=explicit if explicit is not None else min(room, default or room))

    async def run(prompts: list[list[int]], params: SamplingParams, stream: bool) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(prompts, params, stream, loop)
        if stream:
            job.events = asyncio.Queue()
        else:
            job.future = loop.create_future()
        try:
            worker.submit(job)
        except Busy:
            raise ApiError(429, f"server busy: {config.max_queue} requests already queued; retry later") from None
        return job

    async def wait(job: Job) -> list[Completion]:
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        except LmforgeError as e:
            raise ApiError(400, str(e)) from None

    def usage(completions: list[Completion]) -> dict:
        prompt = sum(c.prompt_tokens for c in completions[:1]) if completions else 0
        done = sum(c.completion_tokens for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def sse(obj) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    async def event_stream(job: Job, chunk, final_usage: bool):
        """SSE bytes for a streaming job: `chunk(delta, finish_reason)` builds each event."""
        try:
            first = chunk(None, None)
            if first is not None:
                yield sse(first)
            while True:
                item = await job.events.get()
                if isinstance(item, Exception):
                    status = 400 if isinstance(item, LmforgeError) else 500
                    yield sse(ApiError(status, f"generation failed: {item}").body())
                    break
                if isinstance(item, Completion):
                    yield sse(chunk("", item.finish_reason))
                    if final_usage:
                        last = chunk("", None)
                        last["choices"] = []
                        last["usage"] = usage([item])
                        yield sse(last)
                    break
                yield sse(chunk(item, None))
            yield b"data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # client gone or stream over: the worker stops at the next token

    def check_ids(ids: Any, where: str) -> list[int]:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ApiError(400, f"{where} must be a non-empty string or list of token ids", "prompt")
        bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"{where}: token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", "prompt")
        return ids

    # ----------------------------------------------------------------------------- routes

    @app.get("/health")
    async def health():
        return {
            "status": "ok", "model": config.model_name, "load": worker.load(), "max_queue": config.max_queue,
            **worker.stats,
        }

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        card = {"id": config.model_name, "object": "model", "created": created, "owned_by": "lmforge", "max_model_len": ctx}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_body(request)
        params, explicit, n, stream = sampling_from_body(body, None, ("max_tokens",))
        include_usage = _include_usage(body)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            prompts = [check_ids(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
        elif isinstance(prompt, list) and prompt:
            prompts = [check_ids(prompt, "prompt")]
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings or token ids", "prompt")
        ids = [engine.encode_prompt(p) if isinstance(p, str) else p for p in prompts]
        if any(len(p) == 0 for p in ids):
            raise ApiError(400, "the prompt is empty", "prompt")
        longest = max(len(p) for p in ids)
        params = settle_max_tokens(params, explicit, longest, 16)
        if stream and (len(ids) > 1 or n > 1):
            raise ApiError(400, "streaming supports one prompt with n = 1", "stream")
        if len(ids) * n > config.max_n:
            raise ApiError(400, f"at most {config.max_n} choices per request (prompts x n)", "n")
        rid, model_name = f"cmpl-{uuid.uuid4().hex[:24]}", config.model_name
        job = await run([p for p in ids for _ in range(n)], params, stream)
        if stream:

            def chunk(delta, finish):
                if delta is None:
                    return None
                return {
                    "id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                    "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}],
                }

            return StreamingResponse(event_stream(job, chunk, include_usage), media_type="text/event-stream")
        results = await wait(job)
        choices = [
            {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(results)
        ]
        total = {
            "prompt_tokens": sum(len(p) for p in ids),
            "completion_tokens": sum(c.completion_tokens for c in results),
        }
        total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
        return {
            "id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": total,
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_body(request)
        params, explicit, n, stream = sampling_from_body(body, None, ("max_tokens", "max_completion_tokens"))
        include_usage = _include_usage(body)
        messages = _messages(body)
        try:
            ids, _ = tokenizer.render_chat(messages, add_generation_prompt=True)
        except LmforgeError as e:
            raise ApiError(400, str(e), "messages") from None
        params = settle_max_tokens(params, explicit, len(ids), config.default_max_tokens)
        if end_id is not None:
            params = replace(params, stop_token_ids=[*params.stop_token_ids, end_id])
        if stream and n > 1:
            raise ApiError(400, "streaming supports n = 1", "n")
        if n > config.max_n:
            raise ApiError(400, f"at most {config.max_n} choices per request", "n")
        rid, model_name = f"chatcmpl-{uuid.uuid4().hex[:24]}", config.model_name
        job = await run([list(ids)] * n, params, stream)
        if stream:

            def chunk(delta, finish):
                d = {"role": "assistant", "content": ""} if delta is None else ({"content": delta} if delta else {})
                return {
                    "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                    "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}],
                }

            return StreamingResponse(event_stream(job, chunk, include_usage), media_type="text/event-stream")
        results = await wait(job)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(results)
        ]
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": usage(results),
        }

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None) -> None:
    """Run the server until interrupted (uvicorn, one process)."""
    import uvicorn

    config = config or ServerConfig()
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    app = create_app(model, tokenizer, config)
    uvicorn.run(app, host=host, port=port, log_level="info")
