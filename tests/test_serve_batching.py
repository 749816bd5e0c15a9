"""Continuous batching (`lmforge.inference.scheduler`): concurrent requests share decode steps, new
ones join a running batch, and every request gets the tokens the engine gives it alone."""

from __future__ import annotations

import pytest
import torch

from interop_common import model, tokenizer
from lmforge.inference import Engine, SamplingParams
from lmforge.inference.scheduler import Scheduler
from lmforge.inference.scoring import score_tokens

TEXTS = ["To be", "ROMEO. But soft, what light through yonder", "Now is the winter of our", "x", "The slings"]


def run(scheduler: Scheduler, arrivals: dict[int, list]) -> int:
    """Step until idle; arrivals[k] = [(prompt ids, params)] added before step k. -> steps taken."""
    seqs, step = {}, 0
    while step <= max(arrivals) or not scheduler.idle:
        for i, (ids, params) in enumerate(arrivals.get(step, [])):
            seqs[(step, i)] = scheduler.add([ids], params)[0]
        scheduler.step()
        step += 1
    run.seqs = seqs
    return step


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_requests_joining_at_different_steps_equal_the_engine_alone(arch):
    tok = tokenizer()
    engine = Engine(model(arch=arch, max_seq_len=96), tok)
    ids = [engine.encode_prompt(t) for t in TEXTS]
    free = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    # a stop string taken from what the model writes, so it triggers mid-way
    sample = engine.generate([ids[2]], free)[0].text
    params = [
        SamplingParams(max_new_tokens=25, temperature=0, ignore_eos=True),
        SamplingParams(max_new_tokens=3, temperature=0),
        SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, stop=[sample[8:10]]),
        SamplingParams(max_new_tokens=96, temperature=0),  # capped by the context window
        SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True),
    ]
    alone = [engine.generate([i], p)[0] for i, p in zip(ids, params)]
    assert alone[2].finish_reason == "stop" and alone[3].finish_reason == "length"
    scheduler = Scheduler(engine, max_batch=3)  # fewer slots than requests: some wait for one
    arrivals = {
        0: [(ids[0], params[0]), (ids[1], params[1])],
        2: [(ids[2], params[2])],
        5: list(zip(ids[3:], params[3:])),
    }
    steps = run(scheduler, arrivals)
    got = [run.seqs[k] for k in [(0, 0), (0, 1), (2, 0), (5, 0), (5, 1)]]
    for want, seq in zip(alone, got):
        c = seq.completion()
        assert (c.token_ids, c.text, c.finish_reason) == (want.token_ids, want.text, want.finish_reason)
    # the steps were shared: the run lasts as long as its last request, which joined at step 5
    assert steps == 5 + alone[3].completion_tokens < sum(c.completion_tokens for c in alone)
    assert scheduler.running == [] and scheduler.cache.k.shape[1] == 3


def test_a_new_request_joins_the_running_batch_and_finished_rows_leave():
    engine = Engine(model(max_seq_len=96), tokenizer())
    scheduler = Scheduler(engine, max_batch=4)
    long = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    short = SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True)
    a = scheduler.add([engine.encode_prompt("To be")], long)[0]
    for _ in range(5):
        scheduler.step()
    b = scheduler.add([engine.encode_prompt("Now is")], short)[0]
    events = scheduler.step()  # a decodes its 6th token, b is prefilled and takes its 1st
    assert [e.sequence for e in events] == [a, b] and scheduler.running == [a, b]
    events = scheduler.step()  # one forward pass for both
    assert [e.sequence for e in events] == [a, b]
    scheduler.step()
    assert b.finished and scheduler.running == [a] and len(a.row.ids) == 8
    scheduler.cancel(a)
    assert scheduler.step() == [] and scheduler.idle


def test_sampled_requests_keep_their_seeds():
    engine = Engine(model(max_seq_len=96), tokenizer())
    params = SamplingParams(max_new_tokens=15, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
    ids = engine.encode_prompt("To be")
    alone = engine.generate([ids, ids], params)  # n = 2: seeds 11 and 12
    scheduler = Scheduler(engine, max_batch=4)
    other = scheduler.add([engine.encode_prompt("ROMEO.")], SamplingParams(max_new_tokens=9, temperature=0))
    scheduler.step()
    seqs = scheduler.add([ids, ids], params)
    while not scheduler.idle:
        scheduler.step()
    assert [s.completion().token_ids for s in seqs] == [c.token_ids for c in alone]
    assert alone[0].token_ids != alone[1].token_ids and other[0].finished


def test_logprobs_are_the_model_log_softmax_and_echo_scores_the_prompt():
    engine = Engine(model(max_seq_len=96), tokenizer())
    m = engine.model
    scheduler = Scheduler(engine, max_batch=2)
    prompt = engine.encode_prompt("To be, or not")
    sampled = SamplingParams(max_new_tokens=8, temperature=1.2, seed=0, ignore_eos=True)
    seq = scheduler.add([prompt], sampled, logprobs=3, echo=True)[0]
    scheduler.add([engine.encode_prompt("x")], SamplingParams(max_new_tokens=8, temperature=0))
    while not scheduler.idle:
        scheduler.step()
    c = seq.completion()
    (generated, _), (prompt_lp, _) = score_tokens(m, [(prompt, c.token_ids), (prompt[:1], prompt[1:])])
    assert [lp.token_id for lp in c.logprobs] == c.token_ids
    assert [lp.logprob for lp in c.logprobs] == pytest.approx(generated.tolist(), abs=1e-4)
    assert c.prompt_logprobs[0] is None
    assert [lp.logprob for lp in c.prompt_logprobs[1:]] == pytest.approx(prompt_lp.tolist(), abs=1e-4)
    with torch.no_grad():
        full = m(torch.tensor([prompt + c.token_ids])).float().log_softmax(-1)[0]
    for i, lp in enumerate(c.logprobs):
        top = full[len(prompt) - 1 + i].topk(3)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_echo_with_no_new_tokens_and_a_stop_token_without_logprob():
    tok = tokenizer()
    engine = Engine(model(max_seq_len=96), tok)
    scheduler = Scheduler(engine, max_batch=2)
    prompt = engine.encode_prompt("To be")
    scored = scheduler.add([prompt], SamplingParams(max_new_tokens=0, temperature=0), logprobs=0, echo=True)[
        0
    ]
    first = engine.generate([prompt], SamplingParams(max_new_tokens=1, temperature=0))[0].token_ids[0]
    stopping = SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=[first])
    stopped = scheduler.add([prompt], stopping, logprobs=1)[0]
    while not scheduler.idle:
        scheduler.step()
    assert scored.completion().token_ids == [] and len(scored.completion().prompt_logprobs) == len(prompt)
    assert stopped.completion().token_ids == [first] and stopped.completion().logprobs == []
