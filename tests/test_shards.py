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
from memory_common import measured, play_lines, sampled_documents


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


def test_lone_surrogates_are_replaced_as_tiktoken_does(tok: Tokenizer, tmp_path) -> None:
    text = "before \ud800 after"
    tokenize_documents(tok, [text], tmp_path / "t", val_fraction=0.0, progress=False)
    assert load_tokens(tmp_path / "t", "train").tolist() == tok.encode_ordinary(text) + [tok.eos_id]


def test_without_tiktoken_the_same_shards(tok: Tokenizer, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenize_documents(tok, DOCS, tmp_path / "fast", val_fraction=0.2, progress=False)
    plain = Tokenizer(tok.merges, tok.pattern, list(tok.special_ids))

    def no_tiktoken() -> None:
        raise ImportError("tiktoken")

    monkeypatch.setattr(plain, "to_tiktoken", no_tiktoken)
    monkeypatch.setitem(plain.__dict__, "_tiktoken", None)
    tokenize_documents(plain, DOCS, tmp_path / "slow", val_fraction=0.2, progress=False)
    for split in ("train", "val"):
        assert (tmp_path / "fast" / f"{split}.bin").read_bytes() == (
            tmp_path / "slow" / f"{split}.bin"
        ).read_bytes()


def test_batches_and_workers_do_not_change_the_shards(tok: Tokenizer, tmp_path) -> None:
    docs = DOCS + [""] + DOCS[:7]
    tokenize_documents(tok, docs, tmp_path / "a", val_fraction=0.2, workers=1, batch_chars=1, progress=False)
    meta = tokenize_documents(
        tok, docs, tmp_path / "b", val_fraction=0.2, workers=3, batch_chars=500, progress=False
    )
    assert meta["empty_documents"] == 1 and meta["documents"] == len(docs) - 1
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (
            tmp_path / "b" / f"{split}.bin"
        ).read_bytes()


TOKENIZE_IN_A_FRESH_PROCESS = """
from lmforge.data.inputs import read_input_documents
from lmforge.shards import tokenize_documents
from lmforge.tokenizer import Tokenizer

tok = Tokenizer.load(sys.argv[1])
tok.encode("warm up")
start = reset_peak()
docs = read_input_documents([sys.argv[2]])
meta = tokenize_documents(tok, docs, sys.argv[3], workers=2, batch_chars=1 << 16, progress=False)
print(json.dumps({"growth": rss_growth(start), "documents": meta["documents"]}))
"""


def test_tokenize_memory_is_bounded_by_the_batches_not_the_corpus(tok: Tokenizer, tmp_path) -> None:
    """32 MB of JSONL in 64 KB batches: peak RSS rises by under half the corpus (measured: ~10 MB,
    flat from 24 MB of input up), where holding the text, all ids as uint16, or a batch of 256
    documents as lists of ints would cost 32, 42 and over 250 MB."""
    docs = list(sampled_documents(play_lines(), 32_000_000, 32_000))
    with open(tmp_path / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    tok.save(tmp_path / "tok")
    result = measured(
        TOKENIZE_IN_A_FRESH_PROCESS,
        str(tmp_path / "tok"),
        str(tmp_path / "corpus.jsonl"),
        str(tmp_path / "out"),
    )
    assert result["documents"] == len(docs)
    meta = read_meta(tmp_path / "out")
    assert meta["train_bytes"] + meta["val_bytes"] == sum(len(d.encode()) for d in docs)
    assert result["growth"] < 32_000_000 / 2, result


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
