"""OpenAI's request and response formats as plain functions: no web framework, no event loop.

`prepare_request` turns the raw body of /v1/completions or /v1/chat/completions into a
`GenerationRequest` (validated sampling settings and token-id prompts) or raises `ApiError`;
`completion_response`, `chat_response` and `StreamChunks` build what is sent back. The routes
(`lmforge.serve.app`) run `prepare_request` on a worker thread, since it parses and tokenises.

Parameters: temperature (0-2, 0 = greedy), top_p, max_tokens (chat also max_completion_tokens),
stop (string or up to 4 strings), seed, n, stream with stream_options.include_usage, log-probabilities
(completions: `logprobs: k` and `echo`; chat: `logprobs: true` with `top_logprobs: k`; k <= 20),
and the extensions top_k and ignore_eos (as vLLM names them). Parameters lmforge does not
implement (best_of > 1, penalties, logit_bias, tools, echo with stream) are refused with 400
rather than silently ignored; unknown keys are ignored. `model` may be left out; any other name
than the served one is refused with 404 (`model_not_found`), as OpenAI does.

Log-probabilities are the model's own (log-softmax of its logits, before temperature, top-k and
top-p). `echo` with `max_tokens: 0` scores a prompt, the way lm-eval's `local-completions` asks
for log-likelihoods: a token-id prompt is echoed as sent (its first token has logprob null); a
text prompt is echoed as given, after the <|eos|> it is encoded behind, so its first token has the
logprob of starting a document.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from lmforge.errors import LmforgeError
from lmforge.inference.engine import Completion
from lmforge.inference.sampling import SamplingParams, TokenLogprob

ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
SSE_DONE = b"data: [DONE]\n\n"
MAX_LOGPROBS = 20  # alternatives per token (vLLM's default limit; OpenAI allows 5 and 20)


class ApiError(Exception):
    """An error answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str] | None:
        if self.status == 429:
            return {"Retry-After": "1"}
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        return None


@dataclass(frozen=True)
class ServedModel:
    """What request handling needs to know of the model being served."""

    name: str
    context: int  # max_seq_len: prompt + completion tokens
    vocab_size: int
    max_token_bytes: int  # the longest token: a text of n characters has at least n / this many tokens
    end_id: int | None  # <|end|>: a chat reply stops there
    encode: Callable[[str], list[int]]  # a text prompt -> ids (Engine.encode_prompt)
    render_chat: Callable[[list[dict]], list[int]]  # messages -> ids ending in the assistant's turn
    id_to_bytes: Callable[[int], bytes] = bytes  # a token's bytes (log-probabilities name tokens)
    created: int = 0

    @classmethod
    def of(cls, name: str, engine) -> ServedModel:
        tok = engine.tokenizer
        return cls(
            name=name,
            context=engine.max_seq_len,
            vocab_size=tok.vocab_size,
            max_token_bytes=max(1, *tok.token_bytes()),
            end_id=tok.special_ids.get("<|end|>"),
            encode=engine.encode_prompt,
            render_chat=lambda messages: tok.render_chat(messages, add_generation_prompt=True)[0],
            id_to_bytes=tok.id_to_bytes,
            created=int(time.time()),
        )

    def card(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "lmforge",
            "max_model_len": self.context,
        }


@dataclass(frozen=True)
class Echo:
    """A completions prompt sent back before its completion (`echo`)."""

    text: str  # the prompt as given (a token-id prompt: decoded)
    skip: int  # leading prompt tokens not echoed (the <|eos|> a text prompt is encoded behind)


@dataclass
class GenerationRequest:
    kind: Literal["completion", "chat"]
    prompts: list[list[int]]  # one per choice: every prompt repeated n times
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt_tokens: int  # usage.prompt_tokens: the distinct prompts' tokens
    logprobs: int | None = None  # alternatives per token; None: no log-probabilities
    echo: list[Echo] | None = None  # one per choice

    @property
    def prompt_logprobs(self) -> bool:
        """Whether the prompt tokens must be scored (echo with logprobs)."""
        return self.echo is not None and self.logprobs is not None


def models_response(served: ServedModel) -> dict:
    return {"object": "list", "data": [served.card()]}


# ---------------------------------------------------------------------------------------------
# requests


def prepare_request(
    kind: Literal["completion", "chat"], raw: bytes, served: ServedModel, max_n: int, default_max_tokens: int
) -> GenerationRequest:
    """The raw JSON body of a completions (`kind` "completion") or chat request, validated and
    tokenised; ApiError (4xx) for anything that cannot be served."""
    body = parse_json_object(raw)
    check_model(body, served)
    if kind == "completion":
        return _completion_request(body, served, max_n)
    return _chat_request(body, served, max_n, default_max_tokens)


def parse_json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def check_model(body: dict, served: ServedModel) -> None:
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise ApiError(400, "'model' must be a string", "model")
    if name != served.name:
        raise ApiError(
            404,
            f"the model {name!r:.80} does not exist; this server serves {served.name!r}",
            "model",
            "model_not_found",
        )


def _completion_request(body: dict, served: ServedModel, max_n: int) -> GenerationRequest:
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError(400, "'echo' must be true or false", "echo")
    logprobs = _number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    params, explicit, n, stream = sampling_from_body(body, ("max_tokens",), min_tokens=0 if echo else 1)
    if echo and stream:
        raise ApiError(400, "'echo' is not supported with 'stream'", "echo", "unsupported_parameter")
    include_usage = _include_usage(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompts = [_check_ids(p, f"prompt[{i}]", served) for i, p in enumerate(prompt)]
    elif isinstance(prompt, list) and prompt:
        prompts = [_check_ids(prompt, "prompt", served)]
    else:
        raise ApiError(400, "'prompt' must be a string, a list of strings or token ids", "prompt")
    if len(prompts) * n > max_n:
        raise ApiError(400, f"at most {max_n} choices per request (prompts x n)", "n")
    for p in prompts:
        if isinstance(p, str):
            _refuse_surely_too_long(len(p), served, "prompt")
    ids = [served.encode(p) if isinstance(p, str) else p for p in prompts]
    if not all(ids):
        raise ApiError(400, "the prompt is empty", "prompt")
    params = _settle_max_tokens(params, explicit, max(len(p) for p in ids), 16, served.context, "prompt")
    if served.end_id is not None and not params.ignore_eos:  # a text completion stops at <|end|> too
        params = replace(params, stop_token_ids=[*params.stop_token_ids, served.end_id])
    echoes = None
    if echo:
        prefix = len(served.encode(""))
        echoes = [
            Echo(p, prefix) if isinstance(p, str) else Echo(_decode(p, served), 0)
            for p in prompts
            for _ in range(n)
        ]
    choices = [p for p in ids for _ in range(n)]
    return GenerationRequest(
        "completion", choices, params, stream, include_usage, sum(map(len, ids)), logprobs, echoes
    )


def _chat_request(body: dict, served: ServedModel, max_n: int, default_max_tokens: int) -> GenerationRequest:
    params, explicit, n, stream = sampling_from_body(body, ("max_tokens", "max_completion_tokens"))
    include_usage = _include_usage(body)
    logprobs = _chat_logprobs(body)
    messages = _messages(body)
    if n > max_n:
        raise ApiError(400, f"at most {max_n} choices per request", "n")
    _refuse_surely_too_long(sum(len(m["content"]) for m in messages), served, "messages")
    try:
        ids = list(served.render_chat(messages))
    except LmforgeError as e:
        raise ApiError(400, str(e), "messages") from None
    params = _settle_max_tokens(params, explicit, len(ids), default_max_tokens, served.context, "messages")
    if served.end_id is not None:
        params = replace(params, stop_token_ids=[*params.stop_token_ids, served.end_id])
    return GenerationRequest("chat", [ids] * n, params, stream, include_usage, len(ids), logprobs)


def _chat_logprobs(body: dict) -> int | None:
    """`logprobs: true` and `top_logprobs: k` -> k alternatives per token (0 without top_logprobs)."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, "'logprobs' must be true or false", "logprobs")
    k = _number(body, "top_logprobs", None, 0, MAX_LOGPROBS, integer=True)
    if k and not wanted:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (k or 0) if wanted else None


def _decode(ids: list[int], served: ServedModel) -> str:
    return b"".join(map(served.id_to_bytes, ids)).decode("utf-8", errors="replace")


def _context_exceeded(message: str, param: str) -> ApiError:
    return ApiError(400, message, param, "context_length_exceeded")


def _refuse_surely_too_long(chars: int, served: ServedModel, param: str) -> None:
    """Refuse, without tokenising it, a text too long for the context whatever its tokens."""
    at_least = chars // served.max_token_bytes
    if at_least >= served.context:
        raise _context_exceeded(
            f"the prompt has {chars} characters, so at least {at_least} tokens; this model's context is "
            f"{served.context} tokens",
            param,
        )


def _settle_max_tokens(
    params: SamplingParams, explicit: int | None, prompt_len: int, default: int, ctx: int, param: str
) -> SamplingParams:
    if prompt_len >= ctx:
        raise _context_exceeded(
            f"the prompt has {prompt_len} tokens; this model's context is {ctx} tokens", param
        )
    room = ctx - prompt_len
    if explicit is not None and explicit > room:
        raise _context_exceeded(
            f"prompt ({prompt_len} tokens) + max_tokens ({explicit}) exceeds the context of {ctx} tokens",
            "max_tokens",
        )
    return replace(params, max_new_tokens=explicit if explicit is not None else min(room, default))


def _check_ids(ids: Any, where: str, served: ServedModel) -> list[int]:
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise ApiError(400, f"{where} must be a non-empty string or list of token ids", "prompt")
    bad = [i for i in ids if not 0 <= i < served.vocab_size]
    if bad:
        raise ApiError(
            400,
            f"{where}: token id {bad[0]} is outside the vocabulary (0..{served.vocab_size - 1})",
            "prompt",
        )
    return ids


def _number(
    body: dict, key: str, default, lo: float, hi: float, integer: bool = False, lo_open: bool = False
):
    value = body.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ApiError(
            400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r:.40}", key
        )
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
        raise ApiError(
            400, "'stream_options' must be an object like {\"include_usage\": true}", "stream_options"
        )
    return options.get("include_usage", False)


UNSUPPORTED = {
    "best_of": lambda v: v not in (None, 1),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "logit_bias": lambda v: bool(v),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "suffix": lambda v: bool(v),
}


def _refuse_unsupported(body: dict) -> None:
    for key, unsupported in UNSUPPORTED.items():
        if key in body and unsupported(body[key]):
            raise ApiError(400, f"'{key}' is not supported by this server", key, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "only response_format {'type': 'text'} is supported", "response_format")


def sampling_from_body(
    body: dict, max_tokens_keys: tuple[str, ...], min_tokens: int = 1
) -> tuple[SamplingParams, int | None, int, bool]:
    """-> (SamplingParams with max_new_tokens not settled yet, explicit max_tokens or None, n, stream).
    `min_tokens` 0 lets `max_tokens: 0` through (echo: score the prompt only)."""
    _refuse_unsupported(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _number(body, "top_k", 0, 0, 1_000_000, integer=True)
    seed = _number(body, "seed", None, -(2**62), 2**62, integer=True)
    max_tokens = None
    for key in max_tokens_keys:
        if body.get(key) is not None:
            max_tokens = _number(body, key, None, min_tokens, 10**9, integer=True)
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
        raise ApiError(
            400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", "stop"
        )
    params = SamplingParams(
        max_new_tokens=1 if max_tokens is None else max_tokens,
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
            raise ApiError(
                400, f"messages[{i}].role must be system, user or assistant, got {role!r:.40}", "messages"
            )
        if isinstance(content, list):  # content parts: only text
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", "messages")
        out.append({"role": role, "content": content})
    return out


# ---------------------------------------------------------------------------------------------
# responses


def _usage(prompt_tokens: int, completions: list[Completion]) -> dict:
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def token_name(raw: bytes) -> str:
    """A token's text; a token that is part of a UTF-8 character is named by its bytes, as OpenAI
    does (`bytes:\\xe2\\x80`), so distinct tokens never share a name in `top_logprobs`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TokenText:
    """Token ids as the text pieces log-probabilities name, and where each starts in the text."""

    def __init__(self, served: ServedModel, start: int = 0) -> None:
        self.id_to_bytes = served.id_to_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.at = start  # characters of text before the next token

    def piece(self, token_id: int) -> str:
        return token_name(self.id_to_bytes(token_id))

    def offset(self, token_id: int) -> int:
        """The text offset of `token_id`, the next token of the text (advances past it)."""
        at = self.at
        self.at += len(self.decoder.decode(self.id_to_bytes(token_id)))
        return at

    def completion_entry(self, token_id: int, lp: TokenLogprob | None) -> dict:
        """One token of completions' `logprobs` (lists of one)."""
        top = None
        if lp is not None:
            top = {}
            for tid, value in lp.top:
                top.setdefault(self.piece(tid), value)  # two ids may print alike: keep the likelier
        return {
            "tokens": [self.piece(token_id)],
            "token_logprobs": [None if lp is None else lp.logprob],
            "top_logprobs": [top],
            "text_offset": [self.offset(token_id)],
        }

    def chat_entry(self, lp: TokenLogprob) -> dict:
        """One token of chat's `logprobs.content`."""

        def named(tid: int, value: float) -> dict:
            raw = self.id_to_bytes(tid)
            return {"token": token_name(raw), "logprob": value, "bytes": list(raw)}

        return {**named(lp.token_id, lp.logprob), "top_logprobs": [named(t, v) for t, v in lp.top]}


def _joined(entries: list[dict]) -> dict:
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {k: [x for e in entries for x in e[k]] for k in keys}


def _completion_choice(i: int, c: Completion, req: GenerationRequest, served: ServedModel) -> dict:
    echo = req.echo[i] if req.echo is not None else None
    text = (echo.text if echo else "") + c.text
    logprobs = None
    if req.logprobs is not None:
        pieces = TokenText(served)
        entries = []
        if echo:
            prompt = req.prompts[i]
            scored = c.prompt_logprobs or [None] * len(prompt)
            echoed = zip(prompt[echo.skip :], scored[echo.skip :])
            entries += [pieces.completion_entry(t, lp) for t, lp in echoed]
        entries += [pieces.completion_entry(lp.token_id, lp) for lp in c.logprobs or []]
        logprobs = _joined(entries)
    return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def completion_response(
    rid: str, model: str, req: GenerationRequest, results: list[Completion], served: ServedModel
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_completion_choice(i, c, req, served) for i, c in enumerate(results)],
        "usage": _usage(req.prompt_tokens, results),
    }


def _chat_logprobs_of(c: Completion, req: GenerationRequest, served: ServedModel) -> dict | None:
    if req.logprobs is None:
        return None
    pieces = TokenText(served)
    return {"content": [pieces.chat_entry(lp) for lp in c.logprobs or []], "refusal": None}


def chat_response(
    rid: str, model: str, req: GenerationRequest, results: list[Completion], served: ServedModel
) -> dict:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": _chat_logprobs_of(c, req, served),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(results)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(req.prompt_tokens, results),
    }


def sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class StreamChunks:
    """The server-sent events of one streaming response, in OpenAI's chunk formats
    (`text_completion` chunks; `chat.completion.chunk` with a first `role` delta per choice).
    With n > 1 (or several prompts) the choices' chunks interleave, each naming its `index`."""

    def __init__(self, rid: str, model: str, req: GenerationRequest, served: ServedModel) -> None:
        self.rid, self.model, self.req = rid, model, req
        self.pieces = [TokenText(served) for _ in req.prompts]  # per choice: text offsets so far

    def _chunk(self, index: int, delta: str | None, finish: str | None, logprobs: dict | None = None) -> dict:
        if self.req.kind == "completion":
            obj, choice = "text_completion", {"text": delta or ""}
        else:
            d = (
                {"role": "assistant", "content": ""}
                if delta is None
                else ({"content": delta} if delta else {})
            )
            obj, choice = "chat.completion.chunk", {"delta": d}
        return {
            "id": self.rid,
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": index, **choice, "logprobs": logprobs, "finish_reason": finish}],
        }

    def start(self) -> bytes:
        if self.req.kind != "chat":
            return b""
        return b"".join(sse(self._chunk(i, None, None)) for i in range(len(self.req.prompts)))

    def delta(self, index: int, text: str, logprob: TokenLogprob | None = None) -> bytes:
        logprobs = None
        if logprob is not None:
            pieces = self.pieces[index]
            if self.req.kind == "completion":
                logprobs = pieces.completion_entry(logprob.token_id, logprob)
            else:
                logprobs = {"content": [pieces.chat_entry(logprob)], "refusal": None}
        return sse(self._chunk(index, text, None, logprobs))

    def finish(self, index: int, completion: Completion) -> bytes:
        return sse(self._chunk(index, "", completion.finish_reason))

    def done(self, completions: list[Completion]) -> bytes:
        out = b""
        if self.req.include_usage:
            last = self._chunk(0, "", None)
            last["choices"], last["usage"] = [], _usage(self.req.prompt_tokens, completions)
            out += sse(last)
        return out + SSE_DONE

    def error(self, e: Exception) -> bytes:
        status = 400 if isinstance(e, LmforgeError) else 500
        return sse(ApiError(status, f"generation failed: {e}").body()) + SSE_DONE
