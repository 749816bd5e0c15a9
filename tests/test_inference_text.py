"""Text handling of the engine, with a scripted model whose next token is fixed by position:
stop strings, stop tokens, streaming deltas that are whole UTF-8 characters, context overflow, chat."""

import logging

import pytest
import torch
import torch.nn as nn

from lmforge.inference import Engine, SamplingParams
from lmforge.inference.engine import IncrementalDetokenizer, StopMatcher
from lmforge.model.config import ModelConfig
from lmforge.tokenizer import DEFAULT_SPECIALS, Tokenizer

TOK = Tokenizer([], special_tokens=DEFAULT_SPECIALS)  # byte-level: ids 0-255 are the bytes
EOS, END = TOK.special_ids["<|eos|>"], TOK.special_ids["<|end|>"]


class ScriptedModel(nn.Module):
    """At position p it predicts script[p + 1] (a one-hot 'hidden state' and an identity head)."""

    def __init__(self, script: list[int], max_seq_len: int = 512):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=TOK.vocab_size, max_seq_len=max_seq_len)
        self.script = script
        self.dummy = nn.Parameter(torch.zeros(1))
        self.lm_head = nn.Identity()

    def logits(self, h):
        return self.lm_head(h)

    def forward(self, idx, cache=None, start_pos=0, positions=None, attn_mask=None, return_hidden=False):
        B, T = idx.shape
        if positions is None:
            positions = torch.arange(start_pos, start_pos + T).expand(B, T)
        nxt = [[self.script[min(p + 1, len(self.script) - 1)] for p in row] for row in positions.tolist()]
        return nn.functional.one_hot(torch.tensor(nxt), TOK.vocab_size).float() * 10


def engine_for(prompt: list[int], reply: list[int], **kw) -> Engine:
    return Engine(ScriptedModel(prompt + reply, **kw), TOK)


def text_ids(s: str) -> list[int]:
    return list(s.encode("utf-8"))


PROMPT = text_ids("Q: ")
REPLY = "To be, or not to bé — that is the question\n\nTHE END"


def test_scripted_model_plays_its_script():
    out = engine_for(PROMPT, text_ids(REPLY)).generate(
        [PROMPT], SamplingParams(max_new_tokens=500, temperature=0)
    )
    assert out[0].text.startswith(REPLY)


@pytest.mark.parametrize(
    "stop,expected",
    [
        (["\n\n"], "To be, or not to bé — that is the question"),
        (["or", "to"], "To be, "),  # cut at the FIRST stop string found, whichever it is
        (["to bé —"], "To be, or not "),  # a stop string ending inside a multi-byte character
        (["not to bX", "question"], "To be, or not to bé — that is the "),  # a partial match is released
        (["ZZZ"], REPLY),
    ],
)
def test_stop_strings_in_stream_and_generate(stop, expected):
    params = SamplingParams(max_new_tokens=len(text_ids(REPLY)), temperature=0, stop=stop)
    engine = engine_for(PROMPT, text_ids(REPLY))
    stream = engine.stream(PROMPT, params)
    deltas = list(stream)
    assert "".join(deltas) == expected
    assert stream.completion.text == expected
    assert stream.completion.finish_reason == ("length" if stop == ["ZZZ"] else "stop")
    emitted = ""
    for d in deltas:  # no prefix of the output ever showed more than the final text
        emitted += d
        assert expected.startswith(emitted)
    assert engine.generate([PROMPT], params)[0].text == expected


def test_stream_deltas_are_whole_characters():
    reply = "Ça va? 日本語 and 🎭 masks"
    engine = engine_for(PROMPT, text_ids(reply) + [EOS])
    deltas = list(engine.stream(PROMPT, SamplingParams(max_new_tokens=100, temperature=0)))
    assert "".join(deltas) == reply
    assert all("\ufffd" not in d for d in deltas)
    assert "🎭" in deltas  # 4 byte tokens, one delta
    assert len(deltas) == len(reply)


def test_detokenizer_joins_to_decode_even_for_invalid_bytes():
    ids = text_ids("ab") + [0xE6, 0x97] + text_ids("c") + [0xFF] + text_ids("日")[:2]
    detok = IncrementalDetokenizer(TOK)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == TOK.decode(ids)


def test_stop_matcher_holds_back_only_possible_stop_prefixes():
    m = StopMatcher(["</s>", "END"])
    assert m.feed("hello <") == ("hello ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("x E") == ("</x ", False)
    assert m.feed("NDING") == ("", True)


def test_stop_token_ends_the_completion_and_stays_in_token_ids():
    reply = text_ids("All's well") + [EOS] + text_ids("that ends well")
    out = engine_for(PROMPT, reply).generate([PROMPT], SamplingParams(max_new_tokens=50, temperature=0))[0]
    assert (out.text, out.finish_reason) == ("All's well", "stop")
    assert out.token_ids == reply[: reply.index(EOS) + 1]
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, stop_token_ids=[ord("t")])
    out = engine_for(PROMPT, reply).generate([PROMPT], params)[0]
    assert out.text == "All's well<|eos|>" and out.finish_reason == "stop"


def test_rows_finishing_at_different_steps_in_one_batch():
    # Row a (3 prompt tokens) reads positions 3..7 of the script and stops at <|eos|>; row b
    # (8 prompt tokens, left-padded in the batch) reads from position 8 on, after a has left the batch.
    a, b = text_ids("A: "), text_ids("Bbbbbb: ")
    engine = Engine(ScriptedModel(a + text_ids("stop") + [EOS] + text_ids(" x" * 20)), TOK)
    outs = engine.generate([b, a], SamplingParams(max_new_tokens=12, temperature=0))
    assert outs[1].text == "stop" and outs[1].finish_reason == "stop"
    assert outs[0].text == " x" * 6 and outs[0].finish_reason == "length"


def test_context_overflow_keeps_the_end_of_the_prompt(caplog):
    prompt = text_ids("x" * 40)
    engine = engine_for(prompt, text_ids("yz"), max_seq_len=16)
    with caplog.at_level(logging.WARNING, logger="lmforge.inference"):
        out = engine.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0))[0]
    assert "keeping the last 15" in caplog.text
    assert out.prompt_tokens == 15
    assert out.completion_tokens == 1 and out.finish_reason == "length"  # the window is full


def test_chat_stops_at_end_token_and_streams():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    prompt, _ = TOK.render_chat(messages, add_generation_prompt=True)
    engine = engine_for(prompt, text_ids("A poor player.") + [END] + text_ids("<|user|>more"))
    reply = engine.chat(messages, SamplingParams(temperature=0))
    assert (reply.text, reply.finish_reason) == ("A poor player.", "stop")
    assert reply.token_ids[-1] == END
    assert "".join(engine.stream_chat(messages, SamplingParams(temperature=0))) == "A poor player."


def test_closing_a_stream_early_keeps_what_was_made_and_restores_the_model_mode():
    model = ScriptedModel(PROMPT + text_ids(REPLY)).train()
    stream = Engine(model, TOK).stream(PROMPT, SamplingParams(max_new_tokens=40, temperature=0))
    first = [next(stream) for _ in range(5)]
    assert not model.training  # generation runs in eval mode
    stream.close()
    assert stream.completion.text == "".join(first) == REPLY[:5]
    assert stream.completion.completion_tokens == 5
    assert model.training
