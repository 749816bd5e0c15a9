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
from lmforge.tasks.demo import LISTED_CREDIT, build_demo_tasks, play_title_reward, split_scenes
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
        passage = item.messages[0]["content"].split("\n\n")[1]
        assert passage not in train_text
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert item.messages[0]["content"].endswith("\n\nChoices:\n" + "\n".join(item.choices))
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
            listed = prompt.split("\n\nChoices:\n")[1].split("\n")
            assert p.chosen in listed and p.rejected in listed and p.rejected in tasks.titles
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


def test_answer_format_pair_kinds():
    """unlisted: the right title over a title the question does not list; who_speaks: the speaker's
    name over the speech's next line (the chatbot's two format misses)."""
    cfg = DemoConfig(
        which_play=20,
        who_speaks=5,
        continue_speech=5,
        preference_pairs=60,
        eval_items=40,
        preference_mix={"unlisted": 0.5, "who_speaks": 0.5},
    )
    tasks = build_demo_tasks(cfg, seed=7)
    kinds = [p.kind for p in tasks.preference_train]
    assert kinds.count("unlisted") == 30 and kinds.count("who_speaks") == 30
    near: list[bool] = []  # a rejected title that starts like a listed one ("Henry VI" beside "Henry IV")
    for p in tasks.preference_train + tasks.preference_eval:
        prompt = p.messages[0]["content"]
        if p.kind == "unlisted":
            listed = prompt.split("\n\nChoices:\n")[1].split("\n")
            assert p.chosen in listed and p.rejected not in listed and p.rejected in tasks.titles
            near.append(p.rejected.split()[0] in {c.split()[0] for c in listed})
        else:
            assert prompt.startswith("Who speaks these lines in ")
            lines = prompt.split("\n\n", 1)[1].split("\n")
            assert p.chosen.isupper() and p.rejected not in lines and len(lines) >= 2
    assert 0.3 < sum(near) / len(near) < 0.9


@pytest.mark.parametrize(
    "mix", [{"which_play": 0.5, "echo": 0.4}, {"echo": 1.2, "loop": -0.2}, {"repeat": 1.0}]
)
def test_preference_mix_is_checked(mix):
    with pytest.raises(ValueError, match="preference_mix"):
        DemoConfig(preference_mix=mix).validate()


def test_play_title_reward():
    assert play_title_reward(["q", "q"], [" Hamlet", "Macbeth"], answer=["Hamlet", "Hamlet"]) == [1.0, 0.0]
    # with the listed choices: partial credit for another listed title, none for an unlisted one
    listed = [["Hamlet", "Macbeth", "Pericles", "Cymbeline"]] * 4
    replies = ["Hamlet", "Macbeth\n", "King Lear", "Hamlet is the play"]
    rewards = play_title_reward(["q"] * 4, replies, answer=["Hamlet"] * 4, choices=listed)
    assert rewards == [1.0, LISTED_CREDIT, 0.0, 0.0]
    assert 0 < LISTED_CREDIT < 1


def test_demo_rl_prompts_carry_the_listed_choices():
    tasks = build_demo_tasks(DemoConfig(which_play=10, who_speaks=2, continue_speech=2, eval_items=5), 3)
    for prompt in tasks.rl_prompts:
        assert prompt["answer"] in prompt["choices"] and len(prompt["choices"]) == 4
        assert prompt["messages"][0]["content"].endswith("\n".join(prompt["choices"]))


def test_which_play_reply_tokens_are_in_the_prompt_and_end_is_supervised():
    """The choices are listed one per line, so a title's tokens in the prompt are the tokens of the
    reply (a small model can copy them; in "(A / B)" " Henry" would be one token, the reply's
    "Henry" two); and the SFT loss covers the title and the <|end|> after it, so the model stops."""
    tasks = build_demo_tasks(DemoConfig(which_play=40, who_speaks=2, continue_speech=2, eval_items=5), 3)
    titles_text = " ".join(f"from {t} and {t}, " for t in tasks.titles) * 5
    tok = Tokenizer.train([TEXT + titles_text], vocab_size=400, progress=False, workers=1)
    end = tok.special_ids["<|end|>"]
    which = [c for c in tasks.sft if c[0]["content"].startswith("Which play")]
    assert len(which) == 40
    for conv in which:
        title = conv[1]["content"]
        reply = tok.encode_ordinary(title)
        prompt = tok.encode_ordinary(conv[0]["content"])
        assert any(prompt[i : i + len(reply)] == reply for i in range(len(prompt))), title
        ex = sft_examples([conv], tok, 10_000)[0]
        assert [t for t in ex.labels if t != IGNORE_INDEX] == reply + [end]
        assert ex.labels[-1] == end


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


def test_chat_checks_are_held_out_and_well_formed():
    from lmforge.tasks.demo import CHAT_CHECKS, OUT_OF_DOMAIN, SMALL_TALK

    cfg = DemoConfig(which_play=30, who_speaks=30, continue_speech=30, preference_pairs=10, eval_items=10)
    tasks = build_demo_tasks(cfg, 5)
    kinds = [c.kind for c in tasks.chat_eval]
    assert kinds == ["who_speaks"] * CHAT_CHECKS + ["continue"] * CHAT_CHECKS + ["out_of_domain"] * 10
    train_text = "\n".join(m["content"] for conv in tasks.sft for m in conv)
    for check in tasks.chat_eval:
        question = check.messages[0]["content"]
        if check.kind == "who_speaks":
            assert check.answer in check.names and all(n.isupper() for n in check.names)
            assert question.split("\n\n", 1)[1] not in train_text  # held out by scene
        elif check.kind == "continue":
            assert question.startswith("Continue this speech") and check.answer
        else:
            assert question in OUT_OF_DOMAIN and question not in SMALL_TALK
    assert build_demo_tasks(cfg, 5).chat_eval == tasks.chat_eval  # deterministic


def test_sft_choices_vary_the_listed_titles_of_the_training_questions_only():
    cfg = DemoConfig(which_play=60, who_speaks=2, continue_speech=2, eval_items=10, sft_choices=[1, 4])
    tasks = build_demo_tasks(cfg, 3)
    which = [c for c in tasks.sft if c[0]["content"].startswith("Which play")]
    listed = [c[0]["content"].split("\n\nChoices:\n")[1].split("\n") for c in which]
    assert {len(titles) for titles in listed} == {1, 4}
    assert all(c[1]["content"] in titles for c, titles in zip(which, listed))
    assert all(len(m.choices) == 4 for m in tasks.mc_eval)  # held-out questions: always 4
    assert tasks.rl_prompts and all(len(p["choices"]) == 4 for p in tasks.rl_prompts)
    with pytest.raises(ValueError, match="sft_choices"):
        DemoConfig(sft_choices=[5]).validate()


def _passage_rows(question: str) -> int:
    """Rows of a which-play question's passage: its speaker headings ("NAME:") and verse lines."""
    return len(question.split("\n\n")[1].split("\n"))


def test_sft_passage_lines_vary_the_training_passages_only():
    base = dict(which_play=80, who_speaks=2, continue_speech=2, eval_items=20, passage_lines=4)
    base.update(rl_scene_fraction=0.2, rl_prompts=20)
    cfg = DemoConfig(**base, sft_passage_lines=[1, 4])
    cfg.validate()
    tasks = build_demo_tasks(cfg, 3)
    rows = [_passage_rows(c[0]["content"]) for c in tasks.sft if c[0]["content"].startswith("Which play")]
    # a 1-line passage is its speaker's heading and the line; 4 lines take at least 3 rows
    assert 2 in rows and max(rows) >= 5
    # held-out questions and GRPO's own scenes' prompts keep passage_lines: the same as without it
    plain = build_demo_tasks(DemoConfig(**base), 3)
    assert tasks.mc_eval == plain.mc_eval
    assert min(_passage_rows(m.messages[0]["content"]) for m in tasks.mc_eval) >= 3
    assert min(_passage_rows(p["messages"][0]["content"]) for p in tasks.rl_prompts) >= 3
    only_one = build_demo_tasks(DemoConfig(**base, sft_passage_lines=[1]), 3)
    questions = [c[0]["content"] for c in only_one.sft if c[0]["content"].startswith("Which")]
    assert {_passage_rows(q) for q in questions} == {2}
    with pytest.raises(ValueError, match="sft_passage_lines"):
        DemoConfig(sft_passage_lines=[0]).validate()


def test_rl_scene_fraction_gives_grpo_passages_post_training_never_saw():
    base = dict(which_play=200, who_speaks=20, continue_speech=20, eval_items=40, preference_pairs=60)
    plain = build_demo_tasks(DemoConfig(**base), 3)
    cfg = DemoConfig(**base, rl_scene_fraction=0.2, rl_prompts=50)
    cfg.validate()
    tasks = build_demo_tasks(cfg, 3)
    assert len(tasks.rl_prompts) == 50 and all(len(p["choices"]) == 4 for p in tasks.rl_prompts)
    assert all(p["answer"] in p["choices"] for p in tasks.rl_prompts)
    trained = "\n".join(m["content"] for conv in tasks.sft for m in conv)
    trained += "\n".join(p.messages[0]["content"] + p.chosen for p in tasks.preference_train)
    held_out = "\n".join(m.messages[0]["content"] for m in tasks.mc_eval)
    for p in tasks.rl_prompts:
        passage = p["messages"][0]["content"].split("\n\n")[1]
        assert passage not in trained and passage not in held_out
    # without it GRPO asks SFT's own 4-choice questions
    sft_questions = {c[0]["content"] for c in plain.sft}
    assert all(p["messages"][0]["content"] in sft_questions for p in plain.rl_prompts)
    # the held-out questions stay the same whatever the training split
    assert tasks.mc_eval == plain.mc_eval and tasks.chat_eval == plain.chat_eval
    for bad in ({"rl_scene_fraction": 1.0}, {"rl_scene_fraction": -0.1}, {"rl_prompts": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DemoConfig(**{**base, **bad}).validate()
