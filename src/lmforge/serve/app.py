"""The HTTP routes (FastAPI) of the OpenAI-compatible server, and `serve` to run them.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (both with
`"stream": true` server-sent events, ending in `data: [DONE]`), GET /health (status, load,
jobs served), GET /livez (liveness only: `{"status": "ok"}`), GET / (the chat page).

What the routes do, in order: check the API key (when one is set, every endpoint needs it but
/livez and the page's static files, which carry nothing about the model or the server); read
the body up to `max_request_bytes` (413 beyond, before parsing); parse, validate and tokenise it
on a worker thread (`openai_api.prepare_request`), so the event loop keeps answering other
requests; queue the job on the generation worker (429 when full); answer or stream.

Errors follow OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for invalid or
too deeply nested JSON, bad parameters or a prompt that does not fit the context, 401 for a
missing or wrong API key, 404 for unknown paths and models, 413 for a body over the limit, 429
when the queue is full; an unexpected failure answers 500 and the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lmforge.errors import LmforgeError
from lmforge.inference.engine import Completion, Engine
from lmforge.serve.config import ServerConfig
from lmforge.serve.openai_api import (
    ApiError,
    GenerationRequest,
    ServedModel,
    StreamChunks,
    chat_response,
    check_model,
    completion_response,
    models_response,
    prepare_request,
)
from lmforge.serve.worker import Busy, Job, StreamDelta, StreamEnd, Worker, WorkerClosed

log = logging.getLogger("lmforge.server")
STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Service:
    """What the routes share: the served model, the generation worker and the settings."""

    def __init__(self, model, tokenizer, config: ServerConfig) -> None:
        self.config = config
        engine = Engine(model, tokenizer, max_batch_size=config.max_batch)
        self.served = ServedModel.of(config.model_name, engine)
        self.worker = Worker(engine, config.max_queue, config.max_batch)

    def authorize(self, header: str) -> None:
        key = self.config.api_key
        if not key:
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401, "missing or invalid API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
            )

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit."""
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
        parts, size = [], 0
        try:
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise _too_large(limit)
                parts.append(part)
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected before sending the whole body") from None
        return b"".join(parts)

    async def prepare(self, kind: str, request: Request) -> GenerationRequest:
        raw = await self.read_body(request)
        c = self.config
        return await run_in_threadpool(prepare_request, kind, raw, self.served, c.max_n, c.default_max_tokens)

    def submit(self, req: GenerationRequest) -> Job:
        job = Job.on_this_loop(req.prompts, req.params, req.stream, req.logprobs, req.prompt_logprobs)
        try:
            self.worker.submit(job)
        except Busy:
            raise ApiError(
                429, f"server busy: {self.config.max_queue} requests already queued; retry later"
            ) from None
        except WorkerClosed:
            raise ApiError(503, "the generation worker is not running") from None
        return job

    async def respond(self, kind: str, request: Request) -> Response | dict:
        req = await self.prepare(kind, request)
        job = self.submit(req)
        rid = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex[:24]}"
        name = self.served.name
        if req.stream:
            return StreamingResponse(
                _events(job, StreamChunks(rid, name, req, self.served)), media_type="text/event-stream"
            )
        results = await _results(job)
        build = completion_response if kind == "completion" else chat_response
        return build(rid, name, req, results, self.served)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body exceeds {limit} bytes (the server's --max-request-bytes)",
        code="request_too_large",
    )


async def _results(job: Job) -> list[Completion]:
    try:
        return await job.future
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    except LmforgeError as e:
        raise ApiError(400, str(e)) from None


async def _events(job: Job, chunks: StreamChunks) -> AsyncIterator[bytes]:
    """SSE bytes of a streaming job, as the worker produces its deltas (choices interleaved)."""
    try:
        if first := chunks.start():
            yield first
        while True:
            item = await job.events.get()
            if isinstance(item, StreamDelta):
                yield chunks.delta(item.index, item.text, item.logprob)
            elif isinstance(item, StreamEnd):
                yield chunks.finish(item.index, item.completion)
            elif isinstance(item, Exception):
                yield chunks.error(item)
                return
            else:  # every choice finished: the list of completions
                yield chunks.done(item)
                return
    finally:
        job.cancelled.set()  # client gone or stream over: the worker stops at the next token


def _service(request: Request) -> Service:
    return request.app.state.service


def require_key(request: Request) -> None:
    _service(request).authorize(request.headers.get("authorization", ""))


public = APIRouter()
keyed = APIRouter(dependencies=[Depends(require_key)])


@public.get("/livez")
async def livez():
    return {"status": "ok"}


@public.get("/")
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@keyed.get("/health")
async def health(request: Request):
    service = _service(request)
    worker = service.worker
    return {
        "status": "ok",
        "model": service.served.name,
        "load": worker.load(),
        "max_queue": worker.max_queue,
        **worker.stats,
    }


@keyed.get("/v1/models")
async def models(request: Request):
    return models_response(_service(request).served)


@keyed.get("/v1/models/{name:path}")
async def model_card(request: Request, name: str):
    served = _service(request).served
    check_model({"model": name}, served)
    return served.card()


@keyed.post("/v1/completions")
async def completions(request: Request):
    return await _service(request).respond("completion", request)


@keyed.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await _service(request).respond("chat", request)


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


async def _api_error(request: Request, e: ApiError):
    return _error_response(e)


async def _http_error(request: Request, e: StarletteHTTPException):
    return _error_response(ApiError(e.status_code, str(e.detail)))


async def _validation_error(request: Request, e: RequestValidationError):
    return _error_response(ApiError(400, str(e)))


async def _unexpected(request: Request, e: Exception):
    log.exception("unexpected error")
    return _error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))


def create_app(model, tokenizer, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `model`; generation runs on one background worker thread."""
    service = Service(model, tokenizer, config or ServerConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.worker.close()

    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(public)
    app.include_router(keyed)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(
    model, tokenizer, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None
) -> None:
    """Run the server until interrupted (uvicorn, one process)."""
    import uvicorn

    config = config or ServerConfig()
    if host not in LOCAL_HOSTS and not config.api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this port can use the model", host
        )
    uvicorn.run(create_app(model, tokenizer, config), host=host, port=port, log_level="info")
