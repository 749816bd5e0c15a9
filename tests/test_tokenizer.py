"""The BPE tokenizer against minbpe's vectors, tiktoken, HF tokenizers and transformers."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmforge.data.embedded import embedded_documents
from lmforge.errors import LmforgeError
from lmforge.tokenizer import DEFAULT_SPECIALS, Tokenizer
from lmforge.tokenizer.patterns import GPT4, PATTERNS, resolve_pattern
from memory_common import measured

TRICKY = [
    "",
    "?",
    "hello world!!!? (안녕하세요!) lol123 😉",
    "e\u0301 a\u0308 \u0915\u094d\u0937 👩‍👩‍👧‍👦 🇫🇷",
    "line one\r\nline two\r\n\r\n\ttab\t\ttabs   ",
    "          many spaces then text         \n\n\n   ",
    "1234567890 3.14159 1,000,000 0x1F 2024-11-23",
    "日本語のテキストと中文文本",
    "it's they're we've I'LL he'd",
    "\x00\x01\x1c\x85\u00a0\u2028\u3000\ufeff",
]


@pytest.fixture(scope="module")
def plays() -> list[str]:
    return [text for _, text in embedded_documents("shakespeare")]


@pytest.fixture(scope="module")
def tok(plays: list[str]) -> Tokenizer:
    return Tokenizer.train(plays[:8], 1024, progress=False)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tok")
    tok.save(path)
    return path


def test_tie_break_smaller_pair_wins() -> None:
    for text in ("abcd", "cdab", "dcba"):
        t = Tokenizer.train([text], 257, pattern=r".+", special_tokens=[], progress=False)
        assert t.merges == [min(zip(text.encode(), text[1:].encode()))]


def test_minbpe_vector() -> None:
    t = Tokenizer.train(["aaabdaaabac"], 256 + 3, pattern=r".+", special_tokens=[], progress=False)
    assert t.merges == [(97, 97), (97, 98), (256, 257)]
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.encode_reference("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def test_layout(tok: Tokenizer) -> None:
    assert tok.vocab_size == 1024
    assert len(tok.merges) == 1024 - 256 - len(DEFAULT_SPECIALS)
    assert list(tok.special_ids) == DEFAULT_SPECIALS
    assert list(tok.special_ids.values()) == list(range(1024 - 6, 1024))
    assert tok.bos_id == 1018 and tok.eos_id == 1019
    tb = tok.token_bytes()
    assert len(tb) == tok.vocab_size and tb[:256] == [1] * 256 and tb[-6:] == [0] * 6
    assert all(tb[256 + i] == tb[a] + tb[b] for i, (a, b) in enumerate(tok.merges))


def test_merges_never_cross_chunks(tok: Tokenizer) -> None:
    import regex

    pat = regex.compile(GPT4)
    for i in range(256, 256 + len(tok.merges)):
        piece = tok.id_to_bytes(i).decode("utf-8", errors="ignore")
        if piece and piece == tok.id_to_bytes(i).decode("utf-8", errors="replace"):
            assert len(pat.findall(piece)) == 1, piece


@pytest.mark.parametrize("text", TRICKY)
def test_roundtrip_and_three_encoders_agree(tok: Tokenizer, saved, text: str) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(saved / "tokenizer.json"))
    ids = tok.encode_reference(text)
    assert tok.decode(ids) == text
    assert tok.to_tiktoken().encode_ordinary(text) == ids
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text


def test_real_corpus_identical_ids(tok: Tokenizer, saved, plays: list[str]) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(saved / "tokenizer.json"))
    held_out = plays[30][:200_000]
    ids = tok.encode_reference(held_out)
    assert tok.encode(held_out) == ids
    assert hf.encode(held_out).ids == ids
    assert tok.decode(ids) == held_out
    assert len(held_out.encode()) / len(ids) > 2.2  # it compresses


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_property_roundtrip_and_tiktoken_equal(tok: Tokenizer, text: str) -> None:
    ids = tok.encode_reference(text)
    assert tok.decode(ids) == text
    assert tok.to_tiktoken().encode_ordinary(text) == ids


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list(" \t\r\n0123456789aé'sLL!?.,-😉漢")), max_size=60)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
)
def test_property_hf_export_equal(tok: Tokenizer, saved, text: str) -> None:
    """HF parses special-token strings anywhere (as added tokens), so texts holding one are left out."""
    from tokenizers import Tokenizer as HFTokenizer

    assume(not any(s in text for s in tok.special_ids))
    hf = HFTokenizer.from_file(str(saved / "tokenizer.json"))
    ids = tok.encode_reference(text)
    assert hf.encode(text).ids == ids
    assert tok.decode(ids) == text


def test_special_tokens_refused_by_default(tok: Tokenizer) -> None:
    text = "end of doc<|eos|>next"
    with pytest.raises(LmforgeError, match="special token"):
        tok.encode(text)
    with pytest.raises(LmforgeError, match="special token"):
        tok.encode_batch(["fine", text])
    with pytest.raises(ValueError, match="special token"):  # tiktoken refuses the same text
        tok.to_tiktoken().encode(text)
    ids = tok.encode(text, allowed_special={"<|eos|>"})
    assert tok.eos_id in ids and tok.decode(ids) == text
    assert tok.encode(text, allowed_special="all") == ids
    assert tok.encode_reference(text, {"<|eos|>"}) == ids
    plain = tok.encode_ordinary(text)
    assert tok.eos_id not in plain and tok.decode(plain) == text
    assert tok.encode(text, disallowed_special=()) == plain


def test_encode_batch_matches(tok: Tokenizer, plays: list[str]) -> None:
    texts = [p[:5000] for p in plays[:6]] + ["", "x"]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode_reference(t) for t in texts]


def test_fallback_without_tiktoken(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tokenizer(tok.merges, tok.pattern, DEFAULT_SPECIALS)
    monkeypatch.setitem(t.__dict__, "_tiktoken", None)
    text = TRICKY[2] + "<|user|>"
    assert t.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert t.encode_batch(["a b", "c"]) == tok.encode_batch(["a b", "c"])


def test_save_load_and_hash(tok: Tokenizer, saved) -> None:
    loaded = Tokenizer.load(saved)
    assert loaded.merges == tok.merges and loaded.special_ids == tok.special_ids
    assert loaded.hash == tok.hash and len(tok.hash) == 16
    data = json.loads((saved / "lmforge_tokenizer.json").read_text())
    assert data["format"] == "lmforge-bpe" and data["version"] == 1 and data["pattern_name"] == "gpt4"
    other = Tokenizer(tok.merges[:-1], tok.pattern, DEFAULT_SPECIALS)
    assert other.hash != tok.hash


def test_pickle(tok: Tokenizer) -> None:
    import pickle

    tok.encode("warm the caches")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.hash == tok.hash and clone.encode(TRICKY[2]) == tok.encode(TRICKY[2])


def test_load_errors(tok: Tokenizer, saved, tmp_path) -> None:
    data = json.loads((saved / "lmforge_tokenizer.json").read_text())
    data["version"] = 99
    (tmp_path / "lmforge_tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(LmforgeError, match=r"lmforge_tokenizer.json.*unknown tokenizer format version 99"):
        Tokenizer.load(tmp_path)
    with pytest.raises(LmforgeError, match="no tokenizer here"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "lmforge_tokenizer.json").write_text('{"format": "other"}')
    with pytest.raises(LmforgeError, match="not an lmforge tokenizer"):
        Tokenizer.load(tmp_path)


def test_training_errors() -> None:
    with pytest.raises(LmforgeError, match="too small.*262"):
        Tokenizer.train(["abc"], 261)
    with pytest.raises(LmforgeError, match="inputs are empty"):
        Tokenizer.train(["", ""], 300, progress=False)
    with pytest.raises(LmforgeError, match="unknown split pattern name"):
        Tokenizer.train(["abc"], 300, pattern="gpt5", progress=False)
    with pytest.raises(LmforgeError, match="not a valid regex"):
        resolve_pattern("(unclosed")
    with pytest.raises(LmforgeError, match="must be str, got bytes"):
        Tokenizer.train([b"abc"], 300, progress=False)


def test_deterministic_across_workers(plays: list[str]) -> None:
    a = Tokenizer.train(plays[:14], 600, workers=1, progress=False)
    b = Tokenizer.train(plays[:14], 600, workers=2, progress=False)
    assert b.train_stats["chars"] > 1 << 20  # more than one batch: the process pool ran
    assert a.merges == b.merges and a.hash == b.hash


def test_max_chars(plays: list[str]) -> None:
    t = Tokenizer.train(plays, 300, max_chars=10_000, progress=False)
    assert t.train_stats["chars"] == 10_000


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_patterns_agree_with_tiktoken(plays: list[str], name: str) -> None:
    t = Tokenizer.train([plays[0][:100_000]], 400, pattern=name, progress=False)
    text = plays[1][:20_000] + TRICKY[2] + TRICKY[4] + TRICKY[6]
    assert t.to_tiktoken().encode_ordinary(text) == t.encode_reference(text)
    assert t.decode(t.encode(text)) == text


def _hf_trained(texts: list[str], vocab_size: int):
    """HF tokenizers' BpeTrainer with our split pattern, ByteLevel bytes and the same special tokens."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=DEFAULT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return hf


def test_merges_and_compression_match_hf_trainer(plays: list[str]) -> None:
    """Same pattern, same vocab size: nearly the same merges and compression within 1% of HF BpeTrainer."""

    train, held = plays[:6], plays[-1]
    ours = Tokenizer.train(train, 2048, progress=False)
    hf = _hf_trained(train, 2048)
    from lmforge.tokenizer.tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    ours_merges = {tuple("".join(chars[b] for b in ours.id_to_bytes(i)) for i in m) for m in ours.merges}
    hf_merges = {
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in json.loads(hf.to_str())["model"]["merges"]
    }
    assert len(ours_merges & hf_merges) / len(hf_merges) > 0.98
    n_bytes = len(held.encode())
    ratio = (n_bytes / len(ours.encode(held))) / (n_bytes / len(hf.encode(held).ids))
    assert abs(ratio - 1) < 0.01


# ---------------------------------------------------------------------------- chat


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Who wrote Hamlet?"},
    {"role": "assistant", "content": "Shakespeare, c. 1600."},
    {"role": "user", "content": "And Macbeth?"},
    {"role": "assistant", "content": "Also him."},
]


def test_render_chat_mask(tok: Tokenizer) -> None:
    ids, mask = tok.render_chat(MESSAGES)
    sp = tok.special_ids
    assert len(ids) == len(mask) and ids[0] == sp["<|bos|>"] and mask[0] == 0
    supervised = [i for i, m in zip(ids, mask) if m]
    expected = (
        tok.encode_ordinary("Shakespeare, c. 1600.")
        + [sp["<|end|>"]]
        + tok.encode_ordinary("Also him.")
        + [sp["<|end|>"]]
    )
    assert supervised == expected
    assert tok.decode(ids) == (
        "<|bos|><|system|>You are terse.<|end|><|user|>Who wrote Hamlet?<|end|>"
        "<|assistant|>Shakespeare, c. 1600.<|end|><|user|>And Macbeth?<|end|><|assistant|>Also him.<|end|>"
    )
    role_ids = {sp[f"<|{r}|>"] for r in ("system", "user", "assistant")}
    assert all(m == 0 for i, m in zip(ids, mask) if i in role_ids)
    gen, gen_mask = tok.render_chat(MESSAGES[:2], add_generation_prompt=True)
    assert gen[-1] == sp["<|assistant|>"] and gen_mask == [0] * len(gen)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "system message may only come first",
        ),
        ([{"role": "tool", "content": "a"}], "unknown role 'tool'"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "user", "content": 3}], "content must be a string"),
    ],
)
def test_render_chat_errors(tok: Tokenizer, messages, match: str) -> None:
    with pytest.raises(LmforgeError, match=match):
        tok.render_chat(messages)


def test_transformers_loads_export_and_chat_template_agrees(tok: Tokenizer, saved) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(str(saved))
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.bos_token_id == tok.bos_id and hf.eos_token_id == tok.eos_id
    assert len(hf) == tok.vocab_size
    text = TRICKY[2] + TRICKY[4]
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text

    def ids_of(out) -> list[int]:
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    for gen in (False, True):
        got = ids_of(hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=gen))
        assert got == tok.render_chat(MESSAGES, add_generation_prompt=gen)[0]
    rendered = hf.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert rendered == tok.decode(tok.render_chat(MESSAGES[:2], add_generation_prompt=True)[0])
    with pytest.raises(Exception, match="system message may only come first"):
        hf.apply_chat_template(MESSAGES[1:2] + MESSAGES[:1], tokenize=False)


def test_decode_bad_id(tok: Tokenizer) -> None:
    with pytest.raises(LmforgeError, match="not in the vocabulary"):
        tok.decode([1, 5000])
    with pytest.raises(LmforgeError, match="not in the vocabulary"):
        tok.decode([-1])


@pytest.mark.slow
def test_full_corpus_8192_against_hf(plays: list[str], tmp_path) -> None:
    """The benchmark's setting: all plays but every 10th, vocab 8,192; merges, compression, identical ids."""
    from tokenizers import Tokenizer as HFTokenizer

    train, held = [p for i, p in enumerate(plays) if i % 10 != 9], plays[9::10]
    ours = Tokenizer.train(train, 8192, progress=False)
    hf = _hf_trained(train, 8192)
    from lmforge.tokenizer.tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    ours_merges = {tuple("".join(chars[b] for b in ours.id_to_bytes(i)) for i in m) for m in ours.merges}
    hf_merges = {
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in json.loads(hf.to_str())["model"]["merges"]
    }
    assert len(ours_merges & hf_merges) / len(hf_merges) > 0.99
    ours.save(tmp_path)
    exported = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in held:
        ids = ours.encode_reference(text)
        assert ours.encode(text) == ids == exported.encode(text).ids
        assert ours.decode(ids) == text
    ratio = sum(len(hf.encode(t).ids) for t in held) / sum(len(ours.encode(t)) for t in held)
    assert abs(ratio - 1) < 0.01


# Run in a fresh interpreter (tests/memory_common.py): counts chunks of argv[1] characters of the
# plays' lines, as one document or as a stream of 20 KB documents, with argv[2] worker processes.
COUNT_IN_A_FRESH_PROCESS = """
from memory_common import play_lines, sampled_documents
from lmforge.tokenizer.bpe import count_chunks
from lmforge.tokenizer.patterns import GPT4

n_chars, workers, one_document = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "one"
lines = play_lines()
texts = sampled_documents(lines, n_chars, n_chars if one_document else 20_000)
if one_document:
    texts = list(texts)
start = reset_peak()
counts, chars = count_chunks(texts, GPT4, workers=workers, batch_chars=1 << 18)
print(json.dumps({"growth": rss_growth(start), "chars": chars, "distinct": len(counts)}))
"""


def test_counting_a_long_document_streams_its_chunks() -> None:
    """An 8 MB document: `findall` would list its ~2M chunks (peak RSS +130 MB); counting from
    `finditer` keeps the rise to the counts (measured: ~12 MB)."""
    result = measured(COUNT_IN_A_FRESH_PROCESS, "8000000", "1", "one")
    assert result["chars"] >= 8_000_000 and result["distinct"] > 10_000
    assert result["growth"] < 8_000_000 * 3, result


def test_counting_memory_does_not_grow_with_the_corpus() -> None:
    """A stream of 24 MB in 256 KB batches, 2 worker processes: the peak RSS of the counting process
    and of each worker rise by the counts and the batches in flight (measured: ~12 MB, the same for
    8 MB of input), under 3/4 of the corpus; holding the texts in a list costs ~47 MB."""
    result = measured(COUNT_IN_A_FRESH_PROCESS, "24000000", "2", "stream")
    assert result["chars"] >= 24_000_000
    assert result["growth"] < 24_000_000 * 3 / 4, result
