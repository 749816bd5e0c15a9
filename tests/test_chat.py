"""`lmforge chat`: a real process fed through stdin; history, /reset, /exit and EOF."""

import io
import os
import subprocess
import sys

import pytest
import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.cli import main
from lmforge.commands.chat import fit_history
from lmforge.data.embedded import embedded_documents
from lmforge.inference import Engine, SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer

SYSTEM = "Thou art a player."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train(
        [embedded_documents("shakespeare")[2][1][:20_000]], vocab_size=400, progress=False, workers=1
    )
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=256)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return save_model_checkpoint(model, tok, tmp_path_factory.mktemp("chat") / "ckpt"), model, tok


def chat_process(path, stdin: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lmforge", "chat", "--model", str(path), "--temperature", "0"]
    cmd += ["--max-new-tokens", "8", "--system", SYSTEM, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_chat_keeps_history_resets_and_exits(ckpt):
    path, model, tok = ckpt
    proc = chat_process(path, "Good morrow\nWhat news?\n/reset\nWhat news?\n/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    replies = [r.rstrip("\n") for r in proc.stdout.split("assistant> ")[1:]]
    assert len(replies) == 3 and "(conversation reset)" in replies[1]
    replies[1] = replies[1].split("\n(conversation reset)")[0]

    engine, params = Engine(model, tok), SamplingParams(max_new_tokens=8, temperature=0)
    sys_msg = {"role": "system", "content": SYSTEM}
    r1 = engine.chat([sys_msg, {"role": "user", "content": "Good morrow"}], params).text
    history = [sys_msg, {"role": "user", "content": "Good morrow"}, {"role": "assistant", "content": r1}]
    r2 = engine.chat([*history, {"role": "user", "content": "What news?"}], params).text
    r3 = engine.chat([sys_msg, {"role": "user", "content": "What news?"}], params).text
    assert replies == [r1, r2, r3]
    assert r2 != r3  # the second turn saw the first one; after /reset it did not


def test_chat_exits_on_eof_in_process(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hail\n\n"))
    argv = ["chat", "--model", str(ckpt[0]), "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    want = Engine(ckpt[1], ckpt[2]).chat(
        [{"role": "user", "content": "Hail"}], SamplingParams(5, temperature=0)
    )
    assert out == f"assistant> {want.text}\n"


def test_fit_history_drops_oldest_turns_and_keeps_system(ckpt):
    _, model, tok = ckpt
    engine = Engine(model, tok)
    long = "word " * 60
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"{i} {long}"}, {"role": "assistant", "content": long}]
    msgs.append({"role": "user", "content": "last"})
    kept = fit_history(engine, msgs, reserve=64)
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1] and kept[1]["role"] == "user"
    assert (
        len(tok.render_chat(kept, add_generation_prompt=True)[0])
        <= 256 - 64
        < len(tok.render_chat(msgs, add_generation_prompt=True)[0])
    )


def test_a_message_of_several_lines_goes_between_triple_quotes(ckpt, capsys, monkeypatch):
    """The which-play questions have several lines: between two '\"\"\"' lines they are one message."""
    question = "Which play is this passage from?\n\nROMEO:\nBut soft!"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f'"""\n{question}\n"""\nHail\n'))
    argv = ["chat", "--model", str(ckpt[0]), "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"]
    assert main(argv) == 0
    engine, params = Engine(ckpt[1], ckpt[2]), SamplingParams(5, temperature=0)
    first = [{"role": "user", "content": question}]
    r1 = engine.chat(first, params).text
    second = [*first, {"role": "assistant", "content": r1}, {"role": "user", "content": "Hail"}]
    r2 = engine.chat(second, params).text
    assert capsys.readouterr().out == f"assistant> {r1}\nassistant> {r2}\n"
