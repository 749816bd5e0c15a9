"""Token shards: layout, split, meta checks; the tokenizer/tokenize stages and CLI verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.cli import main as cli_main
from lmforge.data.embedded import embedded_documents
from lmforge.errors import LmforgeError
from lmforge.shards import check_tokenizer, load_tokens, read_meta, token_dtype, tokenize_documents
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    plays = [text for _, text in embedded_documents("shakespeare")]
    return Tokenizer.train(plays[:4], 700, progress=False)


DOCS = [
    f"Document number {i}. " + "To be, or not to be: that is the question. " * (i % 5 + 1) for i in range(60)
]


def test_layout_and_contents(tok: Tokenizer, tmp_path) -> None:
    meta = tokenize_documents(tok, DOCS, tmp_path / "tokens", val_fraction=0.2, seed=7, progress=False)
    assert meta == read_meta(tmp_path / "tokens")
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 700 and meta["tokenizer_hash"] == tok.hash
    assert meta["documents"] == 60 == meta["train_documents"] + meta["val_documents"]
    assert 0 < meta["val_documents"] < 30
    train, val = load_tokens(tmp_path / "tokens", "train"), load_tokens(tmp_path / "tokens", "val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert int((train == tok.eos_id).sum()) == meta["train_documents"]
    assert int((val == tok.eos_id).sum()) == meta["val_documents"] and val[-1] == tok.eos_id
    # the shards are the documents' ids, in order, each followed by EOS
    docs_back = tok.decode(np.concatenate([train, val]).tolist()).split("<|eos|>")[:-1]
    assert sorted(docs_back) == sorted(DOCS)
    train_docs = tok.decode(train.tolist()).split("<|eos|>")[:-1]
    assert train_docs == [d for d in DOCS if d in set(train_docs)]
    assert meta["train_bytes"] + meta["val_bytes"] == sum(len(d.encode()) for d in DOCS)


def test_split_is_deterministic(tok: Tokenizer, tmp_path) -> None:
    a = tokenize_documents(tok, DOCS, tmp_path / "a", val_fraction=0.2, seed=7, progress=False)
    b = tokenize_documents(tok, DOCS, tmp_path / "b", val_fraction=0.2, seed=7, workers=1, progress=False)
    c = tokenize_documents(tok, DOCS, tmp_path / "c", val_fraction=0.2, seed=8, progress=False)
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (
            tmp_path / "b" / f"{split}.bin"
        ).read_bytes()
    assert a["val_tokens"] == b["val_tokens"]
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c" / "val.bin").read_bytes() or c == a


def test_few_documents_still_get_a_val_doc(tok: Tokenizer, tmp_path) -> None:
    meta = tokenize_documents(tok, DOCS[:3], tmp_path / "t", val_fraction=0.01, progress=False)
    assert meta["val_documents"] == 1 and meta["train_documents"] == 2
    meta = tokenize_documents(tok, DOCS[:3], tmp_path / "u", val_fraction=0.0, progress=False)
    assert meta["val_documents"] == 0 and len(load_tokens(tmp_path / "u", "val")) == 0


def test_special_strings_in_documents_are_plain_text(tok: Tokenizer, tmp_path) -> None:
    meta = tokenize_documents(tok, ["a <|eos|> b", "c"], tmp_path / "t", val_fraction=0.0, progress=False)
    train = load_tokens(tmp_path / "t", "train")
    assert int((train == tok.eos_id).sum()) == 2 == meta["documents"]


def test_uint32_when_vocab_is_large() -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_errors(tok: Tokenizer, tmp_path) -> None:
    with pytest.raises(LmforgeError, match="no non-empty documents"):
        tokenize_documents(tok, ["", ""], tmp_path / "empty", progress=False)
    tokenize_documents(tok, DOCS, tmp_path / "t", progress=False)
    other = Tokenizer(tok.merges[:-1], tok.pattern, list(tok.special_ids))
    check_tokenizer(tmp_path / "t", tok)
    with pytest.raises(LmforgeError, match=r"meta.json: the shards were made with tokenizer"):
        check_tokenizer(tmp_path / "t", other)
    with open(tmp_path / "t" / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(LmforgeError, match=r"train.bin: .* bytes, but meta.json says"):
        load_tokens(tmp_path / "t", "train")
    with pytest.raises(LmforgeError, match="not a tokens directory"):
        read_meta(tmp_path / "nowhere")
    with pytest.raises(LmforgeError, match="unknown split"):
        load_tokens(tmp_path / "t", "test")


def test_stages_through_runner(tmp_path) -> None:
    from lmforge.recipe import load_recipe
    from lmforge.run import run_recipe

    recipe = load_recipe(
        None,
        {
            "run_dir": str(tmp_path / "run"),
            "stages": ["tokenizer", "tokenize"],
            "tokenizer.inputs": ["embedded:shakespeare"],
            "tokenizer.vocab_size": 400,
            "tokenizer.max_chars": 200_000,
        },
    )
    run_dir = run_recipe(recipe)
    tok = Tokenizer.load(run_dir / "tokenizer")
    assert tok.vocab_size == 400 and (run_dir / "tokenizer" / "tokenizer.json").exists()
    meta = read_meta(run_dir / "tokens")
    check_tokenizer(run_dir / "tokens", tok)
    assert meta["documents"] == len(embedded_documents("shakespeare")) and meta["val_documents"] >= 1
    assert len(load_tokens(run_dir / "tokens", "train")) == meta["train_tokens"] > 1_000_000


def test_cli_train_encode_decode_tokenize(tmp_path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    (corpus / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": f"line {i} of the jsonl file"}) for i in range(50))
    )
    out = tmp_path / "tok"
    rc = cli_main(
        [
            "tokenizer",
            "train",
            "--input",
            str(corpus),
            "--vocab-size",
            "300",
            "--out",
            str(out),
            "--text-field",
            "body",
            "--workers",
            "1",
        ]
    )
    assert rc == 0 and (out / "lmforge_tokenizer.json").exists()
    capsys.readouterr()
    assert cli_main(["tokenizer", "encode", "--tokenizer", str(out), "the quick fox"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == Tokenizer.load(out).encode("the quick fox")
    assert cli_main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "the quick fox\n"
    rc = cli_main(
        [
            "tokenize",
            "--tokenizer",
            str(out),
            "--input",
            str(corpus),
            "--out",
            str(tmp_path / "tokens"),
            "--text-field",
            "body",
        ]
    )
    assert rc == 0 and read_meta(tmp_path / "tokens")["documents"] == 51


def test_cli_bad_input_names_the_file(tmp_path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    good = tmp_path / "good.txt"
    good.write_text("some good text here\n")
    rc = cli_main(
        ["tokenizer", "train", "--input", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "t")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "bad.txt" in err and "UTF-8" in err
    rc = cli_main(
        [
            "tokenizer",
            "train",
            "--input",
            str(bad),
            str(good),
            "--vocab-size",
            "300",
            "--out",
            str(tmp_path / "t"),
            "--bad-input",
            "skip",
        ]
    )
    assert rc == 0 and "skipped 1 unreadable records" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("")
    rc = cli_main(
        ["tokenizer", "train", "--input", str(empty), "--vocab-size", "300", "--out", str(tmp_path / "t2")]
    )
    assert rc == 2 and "empty" in capsys.readouterr().err
    rc = cli_main(
        ["tokenizer", "train", "--input", str(good), "--vocab-size", "100", "--out", str(tmp_path / "t3")]
    )
    assert rc == 2 and "too small" in capsys.readouterr().err
    (tmp_path / "t4").mkdir()
    (tmp_path / "t4" / "lmforge_tokenizer.json").write_text(
        json.dumps({"format": "lmforge-bpe", "version": 7})
    )
    rc = cli_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t4"), "x"])
    assert rc == 2 and "unknown tokenizer format version 7" in capsys.readouterr().err


def test_help_lists_verbs_and_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["tokenize", "--help"])
    out = capsys.readouterr().out
    assert "--val-fraction" in out and "default: 0.05" in out
    with pytest.raises(SystemExit):
        cli_main(["tokenizer", "train", "--help"])
    assert "default: 8192" in capsys.readouterr().out


def test_bad_input_replace_reports_count(tmp_path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait \xff\xfe and more text here\n" * 20)
    out = tmp_path / "tok"
    rc = cli_main(
        [
            "tokenizer",
            "train",
            "--input",
            str(bad),
            "--vocab-size",
            "300",
            "--out",
            str(out),
            "--bad-input",
            "replace",
        ]
    )
    assert rc == 0 and "with 60 replacement characters" in capsys.readouterr().err
    rc = cli_main(
        [
            "tokenize",
            "--tokenizer",
            str(out),
            "--input",
            str(bad),
            "--out",
            str(tmp_path / "tokens"),
            "--bad-input",
            "replace",
            "--val-fraction",
            "0",
        ]
    )
    assert rc == 0 and read_meta(tmp_path / "tokens")["replaced"] == {str(bad): 60}
    rc = cli_main(["tokenize", "--tokenizer", str(out), "--input", str(bad), "--out", str(tmp_path / "t2")])
    assert rc == 2 and "bad.txt" in capsys.readouterr().err
