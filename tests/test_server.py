"""The OpenAI-compatible server, tested with the official `openai` client against a live server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from interop_common import model, tokenizer
from serve_common import live_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.serve.config import ServerConfig  # noqa: E402
from lmforge.serve.worker import Busy, Job, Worker  # noqa: E402

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server():
    with live_server(ServerConfig(model_name="tiny", max_queue=4)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


def test_completion_matches_engine_and_stream(client, server):
    _, ours, _ = server
    r = client.completions.create(model="tiny", prompt="To be, or not", max_tokens=12, temperature=0)
    want = Engine(ours, tokenizer()).generate(
        ["To be, or not"], SamplingParams(max_new_tokens=12, temperature=0)
    )[0]
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == want.completion_tokens and r.usage.prompt_tokens == want.prompt_tokens
    chunks = list(
        client.completions.create(
            model="tiny", prompt="To be, or not", max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason


def test_chat_matches_engine_and_stream(client, server):
    _, ours, _ = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Hamlet?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=15, temperature=0)
    want = Engine(ours, tokenizer()).chat(messages, SamplingParams(max_new_tokens=15, temperature=0))
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text and r.choices[0].finish_reason == want.finish_reason
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=15,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.completion_tokens == want.completion_tokens


def test_sampling_parameters(client):
    kw = dict(model="tiny", prompt="ROMEO.", max_tokens=10, temperature=1.0, top_p=0.9, ignore_eos=True)
    a = client.completions.create(
        seed=7, **{k: v for k, v in kw.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True}
    )
    b = client.completions.create(
        seed=7, **{k: v for k, v in kw.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True}
    )
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 10
    several = client.completions.create(model="tiny", prompt=["To be", "ROMEO."], n=2, max_tokens=5, seed=1)
    assert len(several.choices) == 4 and [c.index for c in several.choices] == [0, 1, 2, 3]
    # a stop string cuts the text before it, and finish_reason is "stop"
    full = client.completions.create(
        model="tiny", prompt="To be", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    text = full.choices[0].text
    stop = text[3:5] if len(text) >= 5 else text[-1:]
    cut = client.completions.create(
        model="tiny",
        prompt="To be",
        max_tokens=20,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_bad_requests_get_4xx_and_server_survives(client, server):
    url, _, _ = server
    bad = [
        dict(temperature=5),
        dict(top_p=0),
        dict(max_tokens=0),
        dict(max_tokens=1000),  # does not fit the 96-token context
        dict(logprobs=21),
        dict(echo=True, stream=True),
        dict(stop=["a", "b", "c", "d", "e"]),
    ]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="hi", **kw)
        assert e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="word " * 200)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model="tiny", prompt=[1, 2, 10**6])
    with httpx.Client(base_url=url, timeout=30) as h:
        r = h.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = h.post("/v1/completions", json=[1, 2])
        assert r.status_code == 400
        r = h.post("/v1/chat/completions", json={"messages": "hello"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = h.post("/v1/completions", json={"prompt": "x", "stream": "yes"})
        assert r.status_code == 400
        assert h.get("/v1/nothing").status_code == 404
        assert h.get("/health").json()["status"] == "ok"
        page = h.get("/")
        assert page.status_code == 200 and "lmforge chat" in page.text
        assert h.get("/static/chat.js").status_code == 200
    assert client.completions.create(model="tiny", prompt="still alive", max_tokens=2).choices


def test_disconnect_stops_generation_and_full_queue_gets_429(server, client):
    url, _, app = server
    scheduler = app.state.service.worker.scheduler
    produced = []
    real_step = scheduler.step

    def slow_step():  # 20 ms a step, tokens counted, so a disconnect is observable
        events = real_step()
        produced.extend(events)
        time.sleep(0.02)
        return events

    scheduler.step = slow_step
    try:
        body = {"prompt": "To be", "max_tokens": 80, "stream": True, "ignore_eos": True, "temperature": 0}
        with httpx.Client(base_url=url, timeout=30) as h:
            with h.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                next(r.iter_lines())
            deadline = time.time() + 20
            while h.get("/health").json()["load"] != 0:
                assert time.time() < deadline, "generation kept running after the client left"
                time.sleep(0.02)
        assert len(produced) < 40
    finally:
        scheduler.step = real_step
    worker = app.state.service.worker
    worker.max_queue = 0  # every new request now finds the queue full
    try:
        with pytest.raises(openai.RateLimitError, match="busy"):
            client.completions.create(model="tiny", prompt="x", max_tokens=1)
    finally:
        worker.max_queue = 4


def test_worker_bounds_the_queue_and_runs_concurrent_jobs_in_one_batch():
    """Jobs with different settings share the running batch; each gets what the engine gives it alone."""
    tok = tokenizer()
    release = threading.Event()
    engine = Engine(model(), tok)
    worker = Worker(engine, max_queue=4, max_batch=8)
    real_step = worker.scheduler.step

    def gated_step():
        release.wait(10)
        return real_step()

    worker.scheduler.step = gated_step
    loop = asyncio.new_event_loop()
    settings = [
        SamplingParams(max_new_tokens=9, temperature=0, ignore_eos=True),
        SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True),
        SamplingParams(max_new_tokens=12, temperature=0.9, top_k=20, seed=3, ignore_eos=True),
        SamplingParams(max_new_tokens=6, temperature=0, stop=["e"]),
    ]
    texts = ["a", "To be", "ROMEO.", "Now is"]
    jobs = [
        Job([engine.encode_prompt(t)], p, False, loop, future=loop.create_future())
        for t, p in zip(texts, settings)
    ]
    for j in jobs:
        worker.submit(j)
    with pytest.raises(Busy):
        worker.submit(Job([[1]], settings[0], False, loop, future=loop.create_future()))
    release.set()
    loop.run_until_complete(asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 60))
    for j, t, p in zip(jobs, texts, settings):
        alone = engine.generate([t], p)[0]
        assert j.future.result()[0].token_ids == alone.token_ids and j.future.result()[0].text == alone.text
    assert worker.stats["jobs"] == 4 and worker.stats["peak_batch"] == 4
    assert worker.stats["steps"] <= 13  # one batch: the longest job's steps (+1), not the sum (31)
    assert worker.load() == 0
    worker.close()
    loop.close()


def test_api_key_required():
    with live_server(ServerConfig(model_name="tiny", api_key=KEY)) as (url, _, _):
        anonymous = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        with pytest.raises(openai.AuthenticationError):
            anonymous.completions.create(model="tiny", prompt="x", max_tokens=1)
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model="tiny", prompt="x", max_tokens=1).choices
        assert httpx.get(url + "/health").status_code == 401  # it names the model and its load
        assert (
            httpx.get(url + "/health", headers={"Authorization": "Bearer " + KEY}).json()["model"] == "tiny"
        )
        live = httpx.get(url + "/livez")  # the public liveness probe says nothing else
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        page = httpx.get(url + "/")  # the page loads (it carries no model data) and asks for the key
        assert page.status_code == 200 and 'id="key-dialog"' in page.text
        assert httpx.get(url + "/static/chat.js").status_code == 200


def test_no_input_crashes_the_server(server):
    """Random JSON bodies (hypothesis) to both endpoints: only 200 or a 4xx with a message, never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url, _, _ = server
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**20), 10**20)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=8,
    )
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": st.text(max_size=20) | values,
        }
    )
    fields = {
        "prompt": st.text(max_size=30) | st.lists(st.integers(-5, 400), max_size=5) | values,
        "messages": st.lists(message, max_size=3) | values,
        "temperature": st.floats(0, 2) | values,
        "top_p": st.floats(0, 1) | values,
        "top_k": st.integers(0, 500) | values,
        "max_tokens": st.integers(-2, 120) | values,
        "max_completion_tokens": st.integers(0, 5) | values,
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5) | values,
        "seed": st.integers(-(2**70), 2**70) | values,
        "n": st.integers(-1, 10) | values,
        "stream": st.booleans() | values,
        "stream_options": st.just({"include_usage": True}) | values,
        "logprobs": values,
        "ignore_eos": st.booleans() | values,
        "response_format": values,
    }
    bodies = st.dictionaries(st.sampled_from(sorted(fields)), st.just(None), max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: fields[k] for k in d})
    )

    with httpx.Client(base_url=url, timeout=60) as h:

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        @given(body=bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
        def one(body, path):
            with h.stream("POST", path, json=body) as r:
                text = r.read().decode()
            assert r.status_code in (200, 400, 429), (r.status_code, body, text)
            if r.status_code != 200:
                assert r.json()["error"]["message"]
            elif body.get("stream") is True:
                assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text, text

        one()
        for raw in (b"", b"\xff\xfe", b"[]", b'{"prompt": NaN}', b'{"prompt": "x"' + b"}" * 3, b"null"):
            r = h.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, raw
        assert h.get("/health").json()["status"] == "ok"


def test_lmforge_serve_command(tmp_path):
    """`lmforge serve` as a user runs it: a checkpoint, 127.0.0.1, the key from LMFORGE_API_KEY."""
    import os
    import subprocess
    import sys

    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(
        model(max_seq_len=64), tokenizer(), tmp_path / "run" / "sft" / "checkpoints" / "step_000005"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    cmd = [sys.executable, "-m", "lmforge", "serve", "--model", str(tmp_path / "run"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "lmforge serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["run-sft"]
        assert client.chat.completions.create(
            model="run-sft", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        ).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert str(ckpt) in proc.stdout.read()
