"""Task loaders in the real layouts, prompts, metrics, few-shot, bpb, the CLI and the eval stage."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.cli import main as cli
from lmforge.errors import LmforgeError
from lmforge.eval import runner, tasks
from lmforge.eval.api import evaluate_checkpoint, result_rows
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from test_eval_helpers import small_tokenizer

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = small_tokenizer()
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64)
    )
    run = tmp_path_factory.mktemp("run")
    return save_model_checkpoint(
        model, tok, run / "pretrain" / "checkpoints" / "step_000010", stage="pretrain", step=10
    )


def test_mmlu_csv_prompt_and_dev_fewshot():
    task = tasks.load_task(str(FIX / "mmlu" / "test" / "astronomy_test.csv"))
    assert task.name == "mmlu:astronomy_test" and len(task.docs) == 6 and task.chance == 0.25
    doc = task.docs[2]
    assert doc.query.startswith(
        "What causes the phases of the Moon?\nA. The Earth's shadow\nB. The Moon's orbit"
    )
    assert doc.query.endswith("\nD. The Sun's rotation\nAnswer:") and doc.choices == ["A", "B", "C", "D"]
    assert doc.gold == 1
    assert (
        task.description == "The following are multiple choice questions (with answers) about astronomy.\n\n"
    )
    shots = runner.fewshot_examples(task, 0, 2, seed=1)  # first_n of dev/astronomy_dev.csv
    assert [s.query.split("\n")[0] for s in shots] == [
        "What is the largest planet in the Solar System?",
        "Which planet is known as the Red Planet?",
    ]
    ctx = runner.build_context(task, doc, shots)
    assert ctx.startswith(task.description + shots[0].query + " B\n\n" + shots[1].query + " C\n\n")
    assert ctx.endswith(doc.query)


def test_hellaswag_preprocess_matches_lm_eval():
    task = tasks.load_task(f"hellaswag:{FIX / 'hellaswag.jsonl'}")
    wikihow = task.docs[2]
    assert (
        wikihow.query
        == "Home and Garden: How to make a hanging garden. Choose your plants. pick plants that hang well"
    )
    assert wikihow.choices[0] == "such as ferns and ivy. Ivy grows quickly."
    assert task.docs[3].choices[3] == "paints the guitar on the wall in two colors."
    assert [d.gold for d in task.docs] == [3, 3, 0, 0]
    preprocess = pytest.importorskip("lm_eval.tasks.hellaswag.utils").preprocess

    for line in (FIX / "hellaswag.jsonl").read_text().splitlines():
        for ending in json.loads(line)["endings"]:
            assert tasks.hellaswag_preprocess(ending) == preprocess(ending)


def test_arc_both_layouts_and_generic_mc_answers():
    a = tasks.load_task(str(FIX / "arc.jsonl"))
    b = tasks.load_task(str(FIX / "arc_ai2.jsonl"))
    assert [(d.query, d.choices, d.gold) for d in a.docs] == [(d.query, d.choices, d.gold) for d in b.docs]
    assert a.docs[3].gold == 3 and a.docs[4].choices == ["coal", "wind", "oil"]
    mc = tasks.load_task(str(FIX / "mc.jsonl"))
    assert [d.gold for d in mc.docs] == [0, 1, 2, 1, 0] and mc.chance == 0.25
    gen = tasks.load_task(str(FIX / "gen.jsonl"))
    assert gen.kind == "gen" and gen.docs[1].answers == ["4", "four"]


def test_bad_inputs_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"]\n'
    )
    with pytest.raises(LmforgeError, match=r"bad.jsonl:2: not valid JSON"):
        tasks.load_task(f"mc:{bad}")
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "Z"}\n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl:1: answer 'Z'"):
        tasks.load_task(f"mc:{bad}")
    csvf = tmp_path / "x_test.csv"
    csvf.write_text("q,a,b,c,d,A\nq,a,b,c,E\n")
    with pytest.raises(LmforgeError, match=r"x_test.csv:2: expected 6 columns"):
        tasks.load_task(f"mmlu:{csvf}")
    with pytest.raises(LmforgeError, match="did you mean 'plays'"):
        tasks.load_task("plyas")


def test_mc_metrics_acc_norm_uses_characters():
    docs = [tasks.MCDoc("q", ["a", "bbbb"], 1)]
    # ll(a) = -2, ll(bbbb) = -4: acc picks "a"; per character -2 vs -1 picks "bbbb"
    m = runner._mc_metrics(docs, [-2.0, -4.0], [[1, 4]])
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0
    assert runner.mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    assert runner.normalize_answer("The  Answer!") == "answer"


def test_bpb_text_equals_definition(ckpt):
    from lmforge.checkpoint.consolidated import load_model
    from lmforge.inference import scoring

    model, tok = load_model(ckpt)
    text = (FIX / "text.txt").read_text()
    m = runner.eval_bpb(model, tok, str(FIX / "text.txt"), 0, 0, 8)
    ll = scoring.rolling_loglikelihoods(model, tok, [text])[0]
    assert m["bytes"] == len(text.encode()) and m["tokens"] == len(tok.encode_ordinary(text))
    assert m["bits_per_byte"] == pytest.approx(-ll / (len(text.encode()) * math.log(2)))
    assert m["token_perplexity"] == pytest.approx(math.exp(-ll / m["tokens"]))
    # a random model is near uniform: about log2(vocab) bits per token
    assert m["nll_per_token"] == pytest.approx(math.log(tok.vocab_size), rel=0.15)


def test_bpb_on_token_shard_skips_specials(ckpt, tmp_path):
    from lmforge.checkpoint.consolidated import load_model

    model, tok = load_model(ckpt)
    text = (FIX / "text.txt").read_text()
    ids = [tok.eos_id] + tok.encode_ordinary(text) + [tok.eos_id] + tok.encode_ordinary(text)
    (tmp_path / "val.bin").write_bytes(np.array(ids, dtype=np.uint16).tobytes())
    (tmp_path / "train.bin").write_bytes(b"")
    meta = {
        "format": "lmforge-tokens",
        "version": 1,
        "dtype": "uint16",
        "vocab_size": tok.vocab_size,
        "tokenizer_hash": tok.hash,
        "train_tokens": 0,
        "val_tokens": len(ids),
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    m = runner.eval_bpb(model, tok, str(tmp_path), 0, 0, 8)
    assert m["bytes"] == 2 * len(text.encode()) and m["tokens"] == len(ids) - 2
    assert 0 < m["bits_per_byte"] < 20


def test_fewshot_is_seeded_and_excludes_the_item():
    task = tasks.load_task(str(FIX / "mc.jsonl"))
    a = [runner.fewshot_examples(task, i, 2, seed=7) for i in range(5)]
    b = [runner.fewshot_examples(task, i, 2, seed=7) for i in range(5)]
    assert a == b
    assert all(task.docs[i] not in a[i] for i in range(5))
    assert a != [runner.fewshot_examples(task, i, 2, seed=8) for i in range(5)]


def test_eval_cli_writes_results_and_compares(ckpt, tmp_path, capsys):
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    specs = f"{FIX / 'mc.jsonl'},bpb:{FIX / 'text.txt'}"
    assert cli(["eval", "--model", str(ckpt), "--tasks", specs, "--out", str(out_a)]) == 0
    table = capsys.readouterr().out
    assert "mc:mc" in table and "bits_per_byte" in table and "0.25" in table
    res = json.loads(out_a.read_text())["checkpoints"][0]
    assert res["stage"] == "pretrain" and res["step"] == 10
    mc = res["tasks"]["mc:mc"]
    assert mc["n"] == 5 and set(mc["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert (
        cli(
            [
                "eval",
                "--model",
                str(ckpt),
                "--tasks",
                specs,
                "--shots",
                "1",
                "--limit",
                "3",
                "--out",
                str(out_b),
            ]
        )
        == 0
    )
    assert json.loads(out_b.read_text())["checkpoints"][0]["tasks"]["mc:mc"]["n"] == 3
    capsys.readouterr()
    assert cli(["eval", "--compare", str(out_a), str(out_b)]) == 0
    cmp = capsys.readouterr().out
    assert "a.json" in cmp and "b.json" in cmp and "diff" in cmp
    assert cli(["eval", "--model", str(ckpt), "--tasks", "nonsense:x"]) == 2


def test_plays_tasks_are_the_posttrain_demo_items(ckpt):
    from lmforge.tasks.config import DemoConfig
    from lmforge.tasks.demo import build_demo_tasks

    res = evaluate_checkpoint(ckpt, ["plays", "plays_chat", "plays_pref"], limit=8, progress=False)["tasks"]
    assert res["plays"]["n"] == 8 and res["plays"]["chance"] == 0.25 and res["plays_pref"]["chance"] == 0.5
    demo = build_demo_tasks(DemoConfig(), 1337)
    task = tasks.load_task("plays")
    assert [d.gold for d in task.docs] == [m.gold for m in demo.mc_eval]
    assert task.docs[0].query.startswith("Which play is this passage from")


def test_plays_answer_scores_the_greedy_chat_replies(ckpt, monkeypatch):
    """format: the reply (whitespace trimmed) is one of the listed titles; acc: it is the gold one."""
    from lmforge.tasks import demo_eval

    res = evaluate_checkpoint(ckpt, ["plays_answer"], limit=3, max_gen_toks=4, progress=False)["tasks"]
    answer = res["plays_answer"]
    assert answer["n"] == 3 and answer["kind"] == "chat_answer" and len(answer["samples"]) == 3
    assert 0.0 <= answer["metrics"]["acc"] <= answer["metrics"]["format"] <= 1.0

    docs = tasks.load_task("plays_answer").docs[:4]
    replies = [
        f" {docs[0].choices[docs[0].gold]}\n",  # right, listed
        docs[1].choices[(docs[1].gold + 1) % 4],  # listed, wrong
        ".",  # neither
        docs[3].choices[docs[3].gold] + " is the play",  # right title inside a sentence: not the format
    ]
    monkeypatch.setattr(demo_eval, "chat_replies", lambda *a, **k: replies)
    metrics, shown = runner.eval_chat_answer(None, None, docs, 8, 2)
    assert metrics["format"] == 0.5 and metrics["acc"] == 0.25 and len(shown) == 2
    assert shown[0]["answers"] == [docs[0].choices[docs[0].gold]] and "title" not in metrics
    # title: a play title, listed or not; an unlisted one counts there and not in format
    titles = tasks.load_task("plays_answer").titles
    unlisted = next(t for t in titles if t not in docs[2].choices)
    assert len(titles) > 30 and set(docs[0].choices) <= set(titles)
    replies[2] = unlisted
    metrics, _ = runner.eval_chat_answer(None, None, docs, 8, 2, titles=titles)
    assert metrics["format"] == 0.5 and metrics["title"] == 0.75
    assert "title" in res["plays_answer"]["metrics"]
    rows = {(task, key) for task, key, *_ in result_rows({"tasks": res})}
    assert {("plays_answer", "format"), ("plays_answer", "title"), ("plays_answer", "acc")} <= rows


def test_plays_answer_checks_the_shape_of_the_other_replies(ckpt, monkeypatch):
    """who-speaks: a speaker name of the play (and the right one); continue and everyday questions:
    verse, i.e. a first line of 3+ words (not empty, not ".", not a fragment)."""
    from lmforge.tasks import demo_eval

    res = evaluate_checkpoint(ckpt, ["plays_answer"], limit=2, max_gen_toks=4, progress=False)["tasks"]
    keys = {
        "who_speaks_name",
        "who_speaks_format",
        "who_speaks_acc",
        "continue_format",
        "out_of_domain_format",
    }
    assert keys <= set(res["plays_answer"]["metrics"])

    checks = tasks.load_task("plays_answer").checks
    who = next(c for c in checks if c.kind == "who_speaks")
    other = next(n for n in who.names if n != who.answer)
    cont = next(c for c in checks if c.kind == "continue")
    ood = next(c for c in checks if c.kind == "out_of_domain")
    picked = [who, who, who, cont, cont, ood, ood, ood]
    elsewhere = next(n for n in who.any_names if n not in who.names)  # a character of another play
    picked = [who, *picked]
    replies = [
        elsewhere,
        who.answer,
        other,
        "Hamlet",
        "And thus the night",
        "and the",
        "",
        ".",
        "I am a king.",
    ]
    monkeypatch.setattr(demo_eval, "chat_replies", lambda *a, **k: replies)
    m = demo_eval.reply_checks(None, None, picked)
    assert m["who_speaks_format"] == pytest.approx(2 / 4) and m["who_speaks_acc"] == pytest.approx(1 / 4)
    assert m["who_speaks_name"] == pytest.approx(3 / 4)
    assert m["continue_format"] == 0.5 and m["out_of_domain_format"] == pytest.approx(1 / 3)
    assert m["replies"] == replies


def test_the_eval_stage_prints_the_final_chatbot_figures(capsys):
    from lmforge.stages.eval import print_answer_summary

    metrics = {
        "format": 0.96,
        "title": 0.99,
        "acc": 0.41,
        "who_speaks_name": 1.0,
        "who_speaks_format": 0.9,
        "who_speaks_acc": 0.2,
    }
    metrics.update(continue_format=1.0, out_of_domain_format=0.8)
    results = {"checkpoints": [{"stage": "sft"}, {"stage": "rl", "tasks": {"plays_answer": {"n": 100}}}]}
    results["checkpoints"][0]["tasks"] = {}
    results["checkpoints"][1]["tasks"]["plays_answer"]["metrics"] = metrics
    print_answer_summary(results)
    out = capsys.readouterr().out
    assert "the rl chatbot" in out and "listed title 96%" in out and "the right one 41%" in out
    assert "(with a play title, listed or not, 99%)" in out
    assert "a character's name to 100% of the who-speaks questions" in out
    assert "(one of that play's 90%, the right one 20%)" in out
    assert "verse to 100% of the continue-this-speech turns and to 80% of the everyday" in out
