"""`lmforge import` of the model classes users have (tiny random transformers models, built here):
Llama 3.1 (RoPE scaling llama3), Qwen2 (q/k/v biases), Qwen3 (QK-norm, head_dim of its own) and
Mistral (SentencePiece-style tokenizer, no chat template). Each: same logits and greedy tokens as
transformers, the tokenizer.json kept as-is with transformers' chat ids, two steps of `lmforge sft`,
then `lmforge export` to the same class with the fine-tuned model's logits."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lmforge.checkpoint.consolidated import load_model  # noqa: E402
from lmforge.cli import main as cli  # noqa: E402
from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.inference.sampling import SamplingParams  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.tokenizer.hf_tokenizer import HFTokenizer  # noqa: E402

TEXTS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players; 42 exits and 7 entrances.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Who wrote the plays?"},
    {"role": "assistant", "content": "Shakespeare, mostly."},
    {"role": "user", "content": "And the sonnets?"},
    {"role": "assistant", "content": "Those too."},
]


def byte_level_bpe(specials, normalizer=None):
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    t = tokenizers.Tokenizer(models.BPE())
    if normalizer:
        t.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(tokenizers.Regex(r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+"), "isolated")
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(TEXTS * 4, trainer)
    return t


def sentencepiece_bpe():
    """Llama 2 / Mistral style: Metaspace "▁" pieces, <unk>, <s> and </s>."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    t.train_from_iterator(TEXTS * 4, trainer)
    return t


def llama31():
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tok = byte_level_bpe(specials)
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg = transformers.LlamaConfig(rope_scaling=rope, rope_theta=50000.0, **shape(tok))
    return (
        transformers.LlamaForCausalLM(cfg),
        tok,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3},
    )


def qwen2():
    tok = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer="NFC")
    cfg = transformers.Qwen2Config(tie_word_embeddings=True, **shape(tok))
    return (
        transformers.Qwen2ForCausalLM(cfg),
        tok,
        {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHATML},
    )


def qwen3():
    tok = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer="NFC")
    cfg = transformers.Qwen3Config(head_dim=32, **shape(tok))
    return (
        transformers.Qwen3ForCausalLM(cfg),
        tok,
        {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHATML},
    )


def mistral():
    tok = sentencepiece_bpe()
    cfg = transformers.MistralConfig(sliding_window=4096, **shape(tok))
    return transformers.MistralForCausalLM(cfg), tok, {"bos_token": "<s>", "eos_token": "</s>"}


def shape(tok) -> dict:
    return dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
    )


FAMILIES = {"llama": llama31, "qwen2": qwen2, "qwen3": qwen3, "mistral": mistral}
CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}


def build(family, path):
    torch.manual_seed(0)
    hf, tok, tok_config = FAMILIES[family]()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
            else:
                p.normal_(0.0, 0.08)
    hf.eval().save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **tok_config})
    )
    return hf, tok


def greedy_hf(hf, prompt, n):
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_finetune_export(family, tmp_path, capsys):
    hf, backend = build(family, tmp_path / "hf")
    assert cli(["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert "tokenizer.json kept as-is" in capsys.readouterr().out
    model, tok = load_model(tmp_path / "ckpt")
    assert isinstance(tok, HFTokenizer) and model.cfg.hf_family == family
    assert (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").read_text() == (
        tmp_path / "hf" / "tokenizer.json"
    ).read_text()

    # the same logits and the same greedy tokens as transformers
    x = torch.randint(0, backend.get_vocab_size(), (2, 40))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    print(f"\nimported {CLASSES[family]}: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    prompt = tok.encode_ordinary(TEXTS[0][:40])
    assert prompt == backend.encode(TEXTS[0][:40], add_special_tokens=False).ids
    ours = Engine(model, tok).generate(
        [prompt], SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    )
    assert ours[0].token_ids == greedy_hf(hf, prompt, 12)

    # the chat ids are transformers' apply_chat_template ids (the model's template, or lmforge's layout)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "tokenizer")
    ids, mask = tok.render_chat(CHAT)
    assert ids == hf_tok.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert tok.decode([i for i, m in zip(ids, mask) if m]).replace("</s>", "").count("Those too.") == 1
    assert ids[max(i for i, m in enumerate(mask) if m)] == tok.special_ids["<|end|>"]
    assert tok.chat_template_source == ("lmforge" if family == "mistral" else "model")

    # two steps of lmforge sft on it
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(8)))
    run = tmp_path / "run"
    recipe = tmp_path / "tune.yaml"
    recipe.write_text(json.dumps({"name": "tune", "run_dir": str(run), "sft": {"data": [str(data)]}}))
    sft = [
        "sft",
        str(recipe),
        "--sft.train.init_from",
        str(tmp_path / "ckpt"),
        "--sft.train.max_steps",
        "2",
        "--sft.train.micro_batch",
        "2",
        "--sft.train.seq_len",
        "96",
        "--sft.train.batch_tokens",
        "192",
        "--sft.train.warmup_steps",
        "1",
        "--sft.train.samples",
        "0",
    ]
    assert cli(sft) == 0
    tuned, tuned_tok = load_model(run / "sft")
    assert tuned_tok.hash == tok.hash
    assert any((a - b).abs().max() > 0 for a, b in zip(tuned.parameters(), model.parameters()))

    # export to the same class: transformers computes the fine-tuned model's logits
    assert cli(["export", "--model", str(run / "sft"), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back).__name__ == CLASSES[family]
    with torch.no_grad():
        diff = (tuned(x) - back(x).logits).abs().max().item()
    print(f"exported fine-tuned {CLASSES[family]}: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    out_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert out_tok.apply_chat_template(CHAT, tokenize=True, return_dict=False) == ids


def test_rope_scaling_changes_long_range_positions_only():
    """llama3 scaling leaves the high frequencies alone and divides the lowest by `factor`."""
    from lmforge.model.config import ModelConfig, RopeScaling
    from lmforge.model.transformer import rope_inv_freq

    plain = ModelConfig(d_model=64, n_head=4, vocab_size=10)
    scaled = ModelConfig(
        d_model=64, n_head=4, vocab_size=10, rope_scaling=RopeScaling(type="llama3", original_max_seq_len=64)
    )
    a, b = rope_inv_freq(plain), rope_inv_freq(scaled)
    assert a[0] == b[0] and torch.allclose(a[-1] / 8, b[-1]) and (b <= a).all()


def test_sentencepiece_streaming_and_specials(tmp_path):
    backend = sentencepiece_bpe()
    (tmp_path / "t").mkdir()
    backend.save(str(tmp_path / "t" / "tokenizer.json"))
    (tmp_path / "t" / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>"})
    )
    tok = HFTokenizer.from_hf_dir(tmp_path / "t")
    ids = tok.encode_ordinary(TEXTS[1])
    assert tok.decode(ids) == TEXTS[1]
    assert tok.decode_bytes(ids).decode() == " " + TEXTS[1]  # streaming keeps the word's leading space
    assert tok.encode_ordinary("</s>") != [tok.eos_id] and tok.encode("</s>", allowed_special="all") == [
        tok.eos_id
    ]
    with pytest.raises(Exception, match="special token"):
        tok.encode("hi </s>")
    tok.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert (
        isinstance(again, HFTokenizer) and again.hash == tok.hash and again.chat_template_source == "lmforge"
    )
    (tmp_path / "saved" / "tokenizer.json").write_text(
        json.dumps(
            {
                **json.loads(backend.to_str()),
                "normalizer": None,
                "truncation": {
                    "max_length": 3,
                    "strategy": "LongestFirst",
                    "stride": 0,
                    "direction": "Right",
                },
            }
        )
    )
    with pytest.raises(Exception, match="hash"):
        Tokenizer.load(tmp_path / "saved")
