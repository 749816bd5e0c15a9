"""Log-probabilities, echo, models.retrieve, streams with n > 1 and concurrent streams, on a live
server through the official `openai` client (its types are OpenAI's shapes)."""

from __future__ import annotations

import threading
import time

import pytest

from interop_common import tokenizer
from serve_common import live_server

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.inference.scoring import score_tokens  # noqa: E402
from lmforge.serve.config import ServerConfig  # noqa: E402
from lmforge.serve.openai_api import token_name  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with live_server(ServerConfig(model_name="tiny", max_queue=8, max_batch=8)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def piece(token_id: int) -> str:
    return token_name(tokenizer().id_to_bytes(token_id))


def test_models_retrieve(client):
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"


def test_completion_logprobs(client, server):
    _, ours, _ = server
    r = client.completions.create(
        model="tiny",
        prompt="To be, or not",
        max_tokens=10,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    lp = r.choices[0].logprobs
    engine = Engine(ours, tokenizer())
    prompt = engine.encode_prompt("To be, or not")
    want = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True))[0]
    assert lp.tokens == [piece(t) for t in want.token_ids] and r.choices[0].text == want.text
    ((scored, _),) = score_tokens(ours, [(prompt, want.token_ids)])
    assert lp.token_logprobs == pytest.approx(scored.tolist(), abs=1e-4)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) == value and top[token] == value  # greedy: the top one
    text = r.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, at in zip(lp.tokens, lp.text_offset):
        assert token.startswith("bytes:") or text[at : at + len(token)] == token


def test_echo_scores_the_prompt_as_lm_eval_asks(client, server):
    _, ours, _ = server
    ids = tokenizer().encode_ordinary("To be, or not to be, that is the question")
    r = client.completions.create(
        model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    c = r.choices[0]
    assert c.text == tokenizer().decode(ids) and c.logprobs.tokens == [piece(t) for t in ids]
    ((scored, greedy),) = score_tokens(ours, [(ids[:1], ids[1:])])
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    assert c.logprobs.token_logprobs[1:] == pytest.approx(scored.tolist(), abs=1e-4)
    assert [
        max(t.values()) == v for t, v in zip(c.logprobs.top_logprobs[1:], c.logprobs.token_logprobs[1:])
    ] == greedy.tolist()
    assert r.usage.completion_tokens == 0
    # lm-eval's own request: echo, max_tokens 1, logprobs 1 -> prompt tokens + one generated token
    r = client.completions.create(
        model="tiny", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    assert len(r.choices[0].logprobs.token_logprobs) == len(ids) + 1
    # a text prompt is echoed as given; its first token is scored after the <|eos|> it starts behind
    text = client.completions.create(
        model="tiny", prompt="To be", max_tokens=2, echo=True, logprobs=0, temperature=0
    )
    assert text.choices[0].text.startswith("To be") and None not in text.choices[0].logprobs.token_logprobs
    plain = client.completions.create(model="tiny", prompt="To be", max_tokens=2, echo=True, temperature=0)
    assert plain.choices[0].text == text.choices[0].text and plain.choices[0].logprobs is None


def test_chat_logprobs(client, server):
    messages = [{"role": "user", "content": "Who is Hamlet?"}]
    r = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert (
        b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace") == r.choices[0].message.content
    )
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == t.logprob for t in content)
    assert all(token_name(bytes(t.bytes)) == t.token for t in content)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert (
        plain.choices[0].logprobs is None and plain.choices[0].message.content == r.choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model="tiny", messages=messages, top_logprobs=2)


def test_streams_with_n_above_one_interleave_their_choices(client, server):
    _, ours, _ = server
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    engine = Engine(ours, tokenizer())
    want = engine.generate([engine.encode_prompt("ROMEO.")] * 3, params)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="ROMEO.",
            n=3,
            max_tokens=12,
            seed=5,
            stream=True,
            logprobs=1,
            extra_body={"ignore_eos": True},
        )
    )
    indices = [c.choices[0].index for c in chunks]
    assert sorted(set(indices)) == [0, 1, 2] and indices != sorted(indices)  # interleaved
    for i, w in enumerate(want):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == i]
        assert "".join(c.text for c in mine) == w.text and mine[-1].finish_reason == "length"
        assert sum(len(c.logprobs.tokens) for c in mine if c.logprobs) == 12
    messages = [{"role": "user", "content": "Hi"}]
    chat = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            n=2,
            max_tokens=6,
            stream=True,
            temperature=0,
            stream_options={"include_usage": True},
        )
    )
    finished = [c.choices[0].index for c in chat if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1] and chat[-1].usage.completion_tokens > 0
    texts = [
        "".join(c.choices[0].delta.content or "" for c in chat if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    ]
    assert texts[0] == texts[1]  # greedy: both choices alike


def test_a_short_stream_started_during_a_long_one_finishes_first(client, server):
    """Continuous batching: the second request joins the running batch instead of waiting."""
    _, _, app = server
    scheduler = app.state.service.worker.scheduler
    real_step = scheduler.step

    def slow_step():  # 10 ms a step, so the long stream is surely still running
        time.sleep(0.01)
        return real_step()

    scheduler.step = slow_step
    done = {}
    try:
        long = client.completions.create(
            model="tiny",
            prompt="To be",
            max_tokens=80,
            stream=True,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        first = next(long)
        assert first.choices[0].text is not None

        def finish_long():
            for _ in long:
                pass
            done["long"] = time.perf_counter()

        reader = threading.Thread(target=finish_long)
        reader.start()
        short = client.completions.create(
            model="tiny",
            prompt="Now",
            max_tokens=3,
            stream=True,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert len("".join(c.choices[0].text for c in short)) > 0
        done["short"] = time.perf_counter()
        reader.join(60)
    finally:
        scheduler.step = real_step
    assert done["short"] < done["long"]
