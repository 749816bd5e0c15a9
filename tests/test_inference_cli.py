"""`lmforge generate` on a saved checkpoint: streaming one prompt, batches from files, errors."""

import json

import pytest
import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.cli import main
from lmforge.data.embedded import embedded_documents
from lmforge.inference import Engine, SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train(
        [embedded_documents("shakespeare")[1][1][:20_000]], vocab_size=400, progress=False, workers=1
    )
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=128)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)  # well-separated logits: greedy has no near-ties
    return save_model_checkpoint(model, tok, tmp_path_factory.mktemp("gen") / "ckpt"), model, tok


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_one_prompt_streams_prompt_and_completion(ckpt, capsys):
    path, model, tok = ckpt
    rc, out, err = run_cli(
        capsys, "generate", "--model", str(path), "--prompt", "ROMEO:", "--max-new-tokens", "12",
        "--temperature", "0", "--device", "cpu",
    )  # fmt: skip
    assert rc == 0
    params = SamplingParams(max_new_tokens=12, temperature=0)
    want = Engine(model, tok).generate(["ROMEO:"], params)[0]
    assert out == "ROMEO:" + want.text + "\n"
    assert f"{want.completion_tokens} tokens" in err and "finish: " in err


def test_generate_seeded_sampling_repeats(ckpt, capsys):
    path = str(ckpt[0])
    args = [
        "generate",
        "--model",
        path,
        "--prompt",
        "Be",
        "--max-new-tokens",
        "15",
        "--seed",
        "3",
        "--top-k",
        "0",
    ]
    first = run_cli(capsys, *args)[1]
    assert run_cli(capsys, *args)[1] == first
    assert run_cli(capsys, *args[:-4], "--seed", "4")[1] != first


def test_generate_prompts_file_text_and_jsonl(ckpt, capsys, tmp_path):
    path, model, tok = ckpt
    prompts = ["First Citizen:", "", "Speak, speak.\nAll:"]
    (tmp_path / "p.txt").write_text("First Citizen:\n\nSpeak, speak.\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    common = ["--model", str(path), "--max-new-tokens", "10", "--temperature", "0", "--batch-size", "2"]
    rc, out, _ = run_cli(capsys, "generate", "--prompts-file", str(tmp_path / "p.txt"), *common)
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [r["prompt"] for r in rows] == ["First Citizen:", "Speak, speak."]
    rc, _, err = run_cli(
        capsys,
        "generate",
        "--prompts-file",
        str(tmp_path / "p.jsonl"),
        *common,
        "--out",
        str(tmp_path / "o.jsonl"),
    )
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    want = Engine(model, tok).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    assert [r["completion"] for r in rows] == [w.text for w in want]
    assert [r["completion_tokens"] for r in rows] == [w.completion_tokens for w in want]
    assert rows[0]["finish_reason"] in ("stop", "length") and "3 prompts" in err


def test_generate_user_errors_are_clean(ckpt, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    rc, _, err = run_cli(capsys, "generate", "--model", str(ckpt[0]), "--prompts-file", str(bad))
    assert rc == 2 and "bad.jsonl:2" in err and '"prompt"' in err
    rc, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
    assert rc == 2 and "missing" in err
    rc, _, err = run_cli(capsys, "generate", "--model", str(ckpt[0]), "--prompt", "x", "--top-p", "0")
    assert rc == 2 and "top_p" in err
