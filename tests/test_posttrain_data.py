"""Post-training data: JSONL formats, SFT prompt-loss masking, packing, the demo task builder."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX
from lmforge.posttrain.config import DemoConfig
from lmforge.posttrain.preference import collate_pairs, tokenize_pair
from lmforge.posttrain.sft_data import SFTLoader, collate, make_example, pack, sft_examples
from lmforge.tasks.chat_data import load_conversations, load_preferences, load_prompts
from lmforge.tasks.demo import build_demo_tasks, play_title_reward, split_scenes
from lmforge.tokenizer import Tokenizer

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
) * 20

CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Who wrote Hamlet?"},
    {"role": "assistant", "content": "Shakespeare."},
    {"role": "user", "content": "And Macbeth?"},
    {"role": "assistant", "content": "Him too."},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=320, progress=False, workers=1)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_supervised_ids_are_exactly_the_assistant_spans(tok):
    ex = make_example(*tok.render_chat(CONVO), max_len=10_000)
    end = tok.special_ids["<|end|>"]
    expected = tok.encode_ordinary("Shakespeare.") + [end] + tok.encode_ordinary("Him too.") + [end]
    assert [t for t in ex.labels if t != IGNORE_INDEX] == expected
    # every label is ignored or the next input token (the TRL check), and alignment is a shift by one
    ids, _ = tok.render_chat(CONVO)
    assert ex.input_ids == ids[:-1]
    assert all(lab in (IGNORE_INDEX, ids[t + 1]) for t, lab in enumerate(ex.labels))
    # system, user and role tokens are never targets
    never = {tok.special_ids[s] for s in ("<|bos|>", "<|system|>", "<|user|>", "<|assistant|>")}
    assert not never & {t for t in ex.labels if t != IGNORE_INDEX}


def test_alpaca_and_messages_files(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": CONVO},
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            {"instruction": "Hi", "output": "Hello"},
        ],
    )
    convs = load_conversations([path])
    assert convs[1] == [{"role": "user", "content": "Add.\n\n2 and 2"}, {"role": "assistant", "content": "4"}]
    assert convs[2][0]["content"] == "Hi"
    assert len(sft_examples(convs, tok, 256)) == 3


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"text": "x"}, r"no conversation layout matches the keys \['text'\]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "message 0"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, row, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVO}, row])
    with pytest.raises(LmforgeError, match=rf"bad\.jsonl:2: .*{needle}"):
        load_conversations([path])


def test_invalid_json_line(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{oops\n')
    with pytest.raises(LmforgeError, match="broken.jsonl:3: not valid JSON"):
        load_preferences([str(p)])
    with pytest.raises(LmforgeError, match="missing.jsonl: file not found"):
        load_conversations([str(tmp_path / "missing.jsonl")])


def test_preference_and_prompt_files(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Say hi", "chosen": "hi", "rejected": "no"},
            {
                "messages": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "A"}],
                "rejected": "B",
            },
        ],
    )
    prefs = load_preferences([path])
    assert prefs[1].chosen == "A" and prefs[1].messages == [{"role": "user", "content": "Q"}]
    bad = write_jsonl(tmp_path / "nochosen.jsonl", [{"prompt": "x", "rejected": "y"}])
    with pytest.raises(LmforgeError, match=r"nochosen.jsonl:1: no preference layout .*missing \['chosen'\]"):
        load_preferences([bad])
    prompts = load_prompts([write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "answer": "A"}])])
    assert prompts == [{"messages": [{"role": "user", "content": "Q"}], "answer": "A"}]


def test_preference_rows_supervise_only_the_completion(tok):
    from lmforge.tasks.chat_data import Preference

    pair = tokenize_pair(Preference([{"role": "user", "content": "Say hi"}], "hello there", "no"), tok, 256)
    end = tok.special_ids["<|end|>"]
    for (ids, labels), text in ((pair.chosen, "hello there"), (pair.rejected, "no")):
        assert [t for t in labels if t != IGNORE_INDEX] == tok.encode_ordinary(text) + [end]
        assert len(ids) == len(labels)
    batch = collate_pairs([pair], pad_id=0)
    assert batch["input_ids"].shape[0] == 2  # [chosen; rejected]


def test_packing_keeps_labels_and_blocks_attention_across_conversations(tok):
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    convs = [
        CONVO,
        [{"role": "user", "content": "Say a word."}, {"role": "assistant", "content": "Fortune."}],
        [{"role": "user", "content": "And another?"}, {"role": "assistant", "content": "Troubles, arrows."}],
    ]
    examples = sft_examples(convs, tok, 256)
    rows = pack(examples, seq_len=256)
    assert len(rows) == 1 and len(rows[0]) == 3
    batch = collate(rows, pad_id=0, length=256)
    n = [len(e.input_ids) for e in examples]
    flat_labels = [t for e in examples for t in e.labels]
    assert batch["labels"][0, : sum(n)].tolist() == flat_labels
    assert (batch["labels"][0, sum(n) :] == IGNORE_INDEX).all()
    mask = batch["attn_mask"][0, 0]
    assert not mask[n[0], n[0] - 1]  # the second conversation's first token cannot see the first
    assert mask[n[0] + 1, n[0]] and mask.diagonal().all()
    assert batch["positions"][0, n[0]].item() == 0

    for arch in ("llama", "gpt2"):
        torch.manual_seed(0)
        model = Transformer(
            ModelConfig(arch=arch, n_layer=2, d_model=32, n_head=4, vocab_size=tok.vocab_size)
        ).eval()
        with torch.no_grad():
            packed = model(batch["input_ids"], positions=batch["positions"], attn_mask=batch["attn_mask"])
            start = 0
            for e in examples:
                alone = model(torch.tensor([e.input_ids]))
                torch.testing.assert_close(
                    packed[0, start : start + len(e.input_ids)], alone[0], atol=1e-5, rtol=1e-5
                )
                start += len(e.input_ids)


def test_sft_loader_is_deterministic_and_resumable(tok):
    convs = [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * (i % 7 + 1)}]
        for i in range(40)
    ]
    examples = sft_examples(convs, tok, 64)
    a = SFTLoader(examples, micro_batch=2, seq_len=64, seed=1, pad_id=0)
    b = SFTLoader(examples, micro_batch=2, seq_len=64, seed=1, pad_id=0)
    for _ in range(3):
        a.next()
    b.load_state_dict(a.state_dict())
    for _ in range(20):  # across epoch boundaries too
        x, y = a.next(), b.next()
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    unpacked = SFTLoader(examples, micro_batch=4, seq_len=64, seed=1, pad_id=0, packing=False).next()
    assert unpacked["input_ids"].shape[0] == 4 and unpacked["input_ids"].shape[1] <= 64


MIX = {"which_play": 0.25, "next_line": 0.25, "echo": 0.25, "loop": 0.25}


def test_demo_tasks_held_out_by_scene_and_deterministic():
    cfg = DemoConfig(
        which_play=200,
        who_speaks=50,
        continue_speech=50,
        small_talk=20,
        preference_pairs=200,
        eval_items=60,
        preference_mix=MIX,
    )
    a = build_demo_tasks(cfg, seed=7)
    b = build_demo_tasks(cfg, seed=7)
    assert a.sft == b.sft and a.mc_eval == b.mc_eval and a.preference_eval == b.preference_eval
    assert build_demo_tasks(cfg, seed=8).sft != a.sft
    assert len(a.mc_eval) == 60 and len(a.preference_eval) == 60 and len(a.sft) == 320

    from lmforge.data.embedded import shakespeare_plays

    train, held_out = split_scenes(shakespeare_plays(), cfg.eval_scene_fraction, 7)
    assert not {id(s) for _, s in train} & {id(s) for _, s in held_out}
    train_text = "\n".join(m["content"] for conv in a.sft for m in conv)
    train_text += "\n".join(p.messages[0]["content"] + p.chosen for p in a.preference_train)
    for item in a.mc_eval[:30]:  # held-out passages never appear in the training data
        passage = item.messages[0]["content"].split("\n\n", 1)[1]
        assert passage not in train_text
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert "(" + " / ".join(item.choices) + ")" in item.messages[0]["content"]
    golds = [m.gold for m in a.mc_eval]
    assert len(set(golds)) == 4  # the answer position varies


def test_preference_pair_kinds():
    cfg = DemoConfig(
        which_play=20, who_speaks=5, continue_speech=5, preference_pairs=80, eval_items=60, preference_mix=MIX
    )
    tasks = build_demo_tasks(cfg, seed=7)
    for pairs, n in ((tasks.preference_train, 80), (tasks.preference_eval, 60)):
        assert sorted(p.kind for p in pairs) == sorted(k for k in MIX for _ in range(n // 4))
    for p in tasks.preference_train + tasks.preference_eval:
        prompt = p.messages[0]["content"]
        assert p.chosen != p.rejected
        if p.kind == "which_play":  # right title vs a wrong listed title
            assert f"{p.chosen} /" in prompt or f"/ {p.chosen})" in prompt
            assert p.rejected in tasks.titles and p.rejected in prompt
            continue
        assert prompt.startswith("Continue this speech") and p.chosen not in prompt.split("\n\n", 1)[1]
        if p.kind == "echo":  # the prompt's last line repeated
            assert prompt.endswith("\n" + p.rejected)
        elif p.kind == "loop":  # the chosen line's first two words, over and over
            head = " ".join(p.chosen.split()[:2])
            assert p.rejected.split(head) == [""] + [" "] * (p.rejected.count(head) - 1) + [""]
            assert len(p.chosen) - len(head) - 1 < len(p.rejected) <= len(p.chosen)
        if p.kind in ("next_line", "echo"):  # of similar length, so length alone does not decide
            assert abs(len(p.chosen) - len(p.rejected)) <= max(4, len(p.chosen) // 8)
    # each kind has its own random stream: the echo pairs do not depend on the rest of the mix
    alone = build_demo_tasks(DemoConfig(**{**cfg.__dict__, "preference_mix": {"echo": 1.0}}), seed=7)
    echo = [p for p in tasks.preference_eval if p.kind == "echo"]
    assert {(p.chosen, p.rejected) for p in echo} <= {(p.chosen, p.rejected) for p in alone.preference_eval}


@pytest.mark.parametrize(
    "mix", [{"which_play": 0.5, "echo": 0.4}, {"echo": 1.2, "loop": -0.2}, {"repeat": 1.0}]
)
def test_preference_mix_is_checked(mix):
    with pytest.raises(ValueError, match="preference_mix"):
        DemoConfig(preference_mix=mix).validate()


def test_play_title_reward():
    assert play_title_reward(["q", "q"], [" Hamlet", "Macbeth"], answer=["Hamlet", "Hamlet"]) == [1.0, 0.0]


def test_small_talk_answers_in_verse_and_leaves_the_other_items_alone():
    from lmforge.tasks.demo import SMALL_TALK

    small = dict(which_play=30, who_speaks=5, continue_speech=5, preference_pairs=10, eval_items=10)
    without = build_demo_tasks(DemoConfig(**small, small_talk=0), 5)
    with_talk = build_demo_tasks(DemoConfig(**small, small_talk=12), 5)
    talk = [c for c in with_talk.sft if c[0]["content"] in SMALL_TALK]
    assert len(talk) == 12 and len(with_talk.sft) == len(without.sft) + 12
    assert all(len(c[1]["content"].split("\n")) == 2 and c[1]["role"] == "assistant" for c in talk)
    assert [m.messages for m in with_talk.mc_eval] == [m.messages for m in without.mc_eval]
    assert [p.chosen for p in with_talk.preference_eval] == [p.chosen for p in without.preference_eval]
