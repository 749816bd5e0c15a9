"""OpenAI request parsing and response building, as plain functions: no web framework, no server."""

import json
from dataclasses import replace

import pytest

from lmforge.inference import Engine
from lmforge.inference.engine import Completion
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.serve.openai_api import (
    SSE_DONE,
    ApiError,
    Echo,
    ServedModel,
    StreamChunks,
    chat_response,
    completion_response,
    models_response,
    prepare_request,
)
from lmforge.tokenizer import DEFAULT_SPECIALS, Tokenizer

TOK = Tokenizer([], special_tokens=DEFAULT_SPECIALS)  # byte-level: every token is one byte
CTX = 64


@pytest.fixture(scope="module")
def engine():
    cfg = ModelConfig(vocab_size=TOK.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=CTX)
    return Engine(Transformer(cfg), TOK)


@pytest.fixture(scope="module")
def served(engine):
    return ServedModel.of("tiny", engine)


def prepare(kind, body, served, raw=None, max_n=8, default_max_tokens=256):
    return prepare_request(
        kind, raw if raw is not None else json.dumps(body).encode(), served, max_n, default_max_tokens
    )


def refused(kind, body, served, raw=None) -> ApiError:
    with pytest.raises(ApiError) as e:
        prepare(kind, body, served, raw)
    return e.value


def test_served_model_describes_the_engine(served):
    assert (served.name, served.context, served.vocab_size, served.max_token_bytes) == (
        "tiny",
        CTX,
        TOK.vocab_size,
        1,
    )
    assert models_response(served)["data"][0] == {
        "id": "tiny",
        "object": "model",
        "created": served.created,
        "owned_by": "lmforge",
        "max_model_len": CTX,
    }


def test_completion_request_tokenises_and_repeats_prompts_n_times(served, engine):
    req = prepare("completion", {"model": "tiny", "prompt": ["ab", "cde"], "n": 2, "temperature": 0}, served)
    a, b = engine.encode_prompt("ab"), engine.encode_prompt("cde")
    assert req.prompts == [a, a, b, b] and req.prompt_tokens == len(a) + len(b)
    assert req.params.greedy and req.params.max_new_tokens == 16  # OpenAI's completions default
    ids = prepare("completion", {"prompt": [[1, 2], [3]], "max_tokens": 5}, served)
    assert ids.prompts == [[1, 2], [3]] and ids.params.max_new_tokens == 5
    assert TOK.special_ids["<|end|>"] in req.params.stop_token_ids  # never printed past <|end|>


def test_chat_request_renders_the_template_and_stops_at_end(served):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    req = prepare(
        "chat", {"messages": messages, "stream": True, "stream_options": {"include_usage": True}}, served
    )
    want, _ = TOK.render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], True
    )
    assert req.prompts == [want] and req.stream and req.include_usage
    assert TOK.special_ids["<|end|>"] in req.params.stop_token_ids
    assert req.params.max_new_tokens == CTX - len(want)  # the default (256) capped by the room left


def test_model_names_other_than_the_served_one_are_404(served):
    e = refused("completion", {"model": "../../etc/passwd", "prompt": "x"}, served)
    assert e.status == 404 and e.body()["error"]["code"] == "model_not_found"
    assert e.body()["error"]["type"] == "invalid_request_error" and e.body()["error"]["param"] == "model"
    assert (
        refused("chat", {"model": ["tiny"], "messages": [{"role": "user", "content": "x"}]}, served).status
        == 400
    )
    assert prepare("completion", {"prompt": "x"}, served).prompts  # no model named: the served one


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
        (b"{not json", "not valid JSON"),
        (b'{"prompt": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_malformed_bodies_are_400(served, raw, message):
    e = refused("completion", None, served, raw)
    assert e.status == 400 and message in e.message


def test_a_prompt_too_long_for_any_tokenisation_is_refused_before_tokenising(engine):
    calls = []

    def counting_encode(text):
        calls.append(len(text))
        return engine.encode_prompt(text)

    served = replace(ServedModel.of("tiny", engine), encode=counting_encode)
    e = refused("completion", {"prompt": "x" * 20_000_000}, served)
    assert e.status == 400 and e.code == "context_length_exceeded" and calls == []
    e = refused("chat", {"messages": [{"role": "user", "content": "x" * 20_000_000}]}, served)
    assert e.code == "context_length_exceeded"
    e = refused("completion", {"prompt": "x" * (CTX - 1)}, served)  # short enough to tokenise: still too long
    assert e.code == "context_length_exceeded" and calls == [CTX - 1]
    e = refused("completion", {"prompt": "xy", "max_tokens": CTX}, served)
    assert e.code == "context_length_exceeded" and e.param == "max_tokens"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "temperature": 5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "echo": True, "stream": True}, "echo"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": [1, 10**6]}, "prompt"),
        ({"prompt": "x", "n": 9}, "n"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(served, body, param):
    e = refused("completion", body, served)
    assert e.status == 400 and e.param == param and e.body()["error"]["message"]


def test_responses_and_stream_chunks_follow_openai(served):
    req = prepare("completion", {"prompt": "ab", "n": 2}, served)
    done = [Completion("hi", [104, 105], "length", 3, 2), Completion("yo", [121], "stop", 3, 1)]
    body = completion_response("cmpl-1", "tiny", req, done, served)
    assert [c["text"] for c in body["choices"]] == ["hi", "yo"] and body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    chat = prepare("chat", {"messages": [{"role": "user", "content": "x"}], "stream": True}, served)
    assert chat_response("c", "tiny", chat, done[:1], served)["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hi",
    }

    def events(blob: bytes) -> list:
        return [json.loads(line[6:]) for line in blob.decode().split("\n\n") if line.startswith("data: {")]

    chunks = StreamChunks("c", "tiny", chat, served)
    assert events(chunks.start())[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events(chunks.delta(0, "he"))[0]["choices"][0]["delta"] == {"content": "he"}
    end = chunks.finish(0, done[0])
    assert events(end)[0]["choices"][0]["finish_reason"] == "length"
    assert chunks.done(done[:1]) == SSE_DONE
    several = StreamChunks("c", "tiny", req, served)  # completions: no role chunk; choices interleave
    assert several.start() == b""
    assert [events(several.delta(i, "x"))[0]["choices"][0]["index"] for i in (1, 0)] == [1, 0]
    usage = StreamChunks(
        "c",
        "tiny",
        prepare(
            "chat",
            {
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            served,
        ),
        served,
    )
    last = events(usage.done(done[:1]))[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 2
    err = events(chunks.error(RuntimeError("boom")))[0]["error"]
    assert err["type"] == "server_error" and "boom" in err["message"]


def test_error_headers():
    assert ApiError(429, "busy").headers() == {"Retry-After": "1"}
    assert ApiError(401, "key").headers() == {"WWW-Authenticate": "Bearer"}
    assert ApiError(413, "big").body()["error"]["type"] == "invalid_request_error"


def test_logprobs_and_echo_are_parsed(served, engine):
    req = prepare("completion", {"prompt": "ab", "echo": True, "max_tokens": 0, "logprobs": 2}, served)
    assert req.echo == [Echo("ab", 1)] and req.logprobs == 2 and req.params.max_new_tokens == 0
    assert req.prompt_logprobs  # the prompt must be scored
    ids = prepare("completion", {"prompt": [104, 105], "echo": True, "n": 2}, served)
    assert ids.echo == [Echo("hi", 0)] * 2 and ids.logprobs is None and not ids.prompt_logprobs
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert prepare("chat", {**chat, "logprobs": True, "top_logprobs": 3}, served).logprobs == 3
    assert prepare("chat", {**chat, "logprobs": True}, served).logprobs == 0
    assert prepare("chat", chat, served).logprobs is None
    assert refused("chat", {**chat, "top_logprobs": 2}, served).param == "top_logprobs"
    assert refused("chat", {**chat, "logprobs": 1}, served).param == "logprobs"


def test_logprobs_responses_follow_openai(served):
    from lmforge.inference.sampling import TokenLogprob

    req = prepare("completion", {"prompt": [104, 105], "echo": True, "max_tokens": 2, "logprobs": 1}, served)
    done = Completion(
        "\u00e9", [0xC3, 0xA9], "length", 2, 2,
        logprobs=[TokenLogprob(0xC3, -1.0, [(0xC3, -1.0)]), TokenLogprob(0xA9, -0.5, [(0xA9, -0.5)])],
        prompt_logprobs=[None, TokenLogprob(105, -2.0, [(106, -1.5)])],
    )
    choice = completion_response("c", "tiny", req, [done], served)["choices"][0]
    assert choice["text"] == "hi\u00e9"
    assert choice["logprobs"] == {
        "tokens": ["h", "i", "bytes:\\xc3", "bytes:\\xa9"],
        "token_logprobs": [None, -2.0, -1.0, -0.5],
        "top_logprobs": [None, {"j": -1.5}, {"bytes:\\xc3": -1.0}, {"bytes:\\xa9": -0.5}],
        "text_offset": [0, 1, 2, 2],  # the half character adds no text until it completes
    }
    chat = prepare("chat", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, served)
    body = chat_response("c", "tiny", chat, [done], served)["choices"][0]["logprobs"]
    assert body["content"][0] == {
        "token": "bytes:\\xc3", "logprob": -1.0, "bytes": [0xC3], "top_logprobs": [
            {"token": "bytes:\\xc3", "logprob": -1.0, "bytes": [0xC3]}
        ]
    }
