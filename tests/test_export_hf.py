"""HF export: transformers loads the directory with no custom code and computes the same thing."""

from __future__ import annotations

import json

import pytest
import torch

from interop_common import SAMPLES, model, tokenizer

transformers = pytest.importorskip("transformers")

from lmforge.cli import main as cli  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.model.convert import export_hf, to_hf_state_dict  # noqa: E402

CASES = {
    "llama-gqa-tied": dict(arch="llama", n_kv_head=2, tie=True),
    "llama-mha-untied": dict(arch="llama", n_kv_head=4, tie=False, rope_theta=500.0),
    "gpt2-untied": dict(arch="gpt2", tie=False),
}
CHATS = [
    [{"role": "user", "content": "Who speaks first?"}],
    [
        {"role": "system", "content": "You know Shakespeare."},
        {"role": "user", "content": "Name a play."},
        {"role": "assistant", "content": "Hamlet"},
        {"role": "user", "content": "Another ✓"},
    ],
]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    ours = model(**CASES[request.param])
    out = export_hf(ours, tokenizer(), tmp_path_factory.mktemp(request.param) / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    return request.param, ours, hf, hf_tok, out


def test_no_custom_code_and_right_class(exported):
    name, ours, hf, _, out = exported
    config = json.loads((out / "config.json").read_text())
    want = "LlamaForCausalLM" if ours.cfg.arch == "llama" else "GPT2LMHeadModel"
    assert type(hf).__name__ == want and config["architectures"] == [want]
    assert "auto_map" not in config
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "lmforge-manifest.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]


def test_logits_match(exported):
    name, ours, hf, _, _ = exported
    torch.manual_seed(1)
    x = torch.randint(0, ours.cfg.vocab_size, (3, 40))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    print(f"\n{name}: max |logit diff| lmforge vs {type(hf).__name__} = {diff:.2e}")  # docs/BENCHMARKS.md
    assert diff <= 1e-4


def test_greedy_generation_identical(exported):
    name, ours, hf, _, _ = exported
    if name == "llama-mha-untied":
        pytest.skip("one llama and one gpt2 case are enough for generation (time)")
    tok = tokenizer()
    prompts = [tok.encode_ordinary(s) for s in ("To be, or not", "ROMEO. But soft")]
    ref = Engine(ours, tok).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True))
    assert len({tuple(c.token_ids) for c in ref}) == 2
    for p, completion in zip(prompts, ref):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert out[0, len(p):].tolist() == completion.token_ids


def test_tokenizer_ids_identical(exported):
    _, _, _, hf_tok, _ = exported
    tok = tokenizer()
    for text in SAMPLES + [open(__file__, encoding="utf-8").read()[:3000]]:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode_ordinary(text)
        assert hf_tok.decode(tok.encode_ordinary(text)) == text
    assert hf_tok.convert_tokens_to_ids("<|end|>") == tok.special_ids["<|end|>"]


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_identical(exported, generation_prompt):
    _, _, _, hf_tok, _ = exported
    tok = tokenizer()
    for messages in CHATS:
        hf_ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        if isinstance(hf_ids, dict) or hasattr(hf_ids, "input_ids"):
            hf_ids = hf_ids["input_ids"]
        ids, _ = tok.render_chat(messages, add_generation_prompt=generation_prompt)
        assert list(hf_ids) == ids


def test_state_dict_layouts():
    ours = model(arch="gpt2", tie=False)
    sd = to_hf_state_dict(ours)
    d = ours.cfg.d_model
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)  # Conv1D: [in, out]
    assert torch.equal(sd["transformer.h.0.attn.c_attn.weight"][:, d : 2 * d], ours.layers["0"].attn.wk.weight.t())
    assert torch.equal(sd["transformer.h.1.mlp.c_fc.weight"], ours.layers["1"].mlp.fc.weight.t())
    assert "lm_head.weight" not in to_hf_state_dict(model(tie=True))


def test_gpt2_with_grouped_query_attention_is_refused(tmp_path):
    from lmforge.model.transformer import Transformer

    cfg = model(arch="llama").cfg
    cfg.arch, cfg.n_kv_head = "gpt2", 2
    with pytest.raises(LmforgeError, match="n_kv_head"):
        export_hf(Transformer(cfg), tokenizer(), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_export_bfloat16(tmp_path, capsys):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ours = model()
    ckpt = save_model_checkpoint(ours, tokenizer(), tmp_path / "ckpt")
    assert cli(["export", "--model", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(hf.model.embed_tokens.weight, ours.tok_emb.weight.to(torch.bfloat16))
    assert cli(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "nowhere" in capsys.readouterr().err
    # re-exporting over an export is fine; over any other non-empty directory it is refused
    assert cli(["export", "--model", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    for not_an_export in (tmp_path / "ckpt" / "tokenizer", tmp_path / "ckpt"):
        assert cli(["export", "--model", str(ckpt), "--out", str(not_an_export)]) == 2
        assert "was not written by lmforge export" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "tokenizer" / "lmforge_tokenizer.json").exists()


def test_export_never_replaces_files_it_did_not_write_without_force(tmp_path, capsys):
    """An HF config beside unrelated files (someone's model folder) is not an earlier export."""
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(model(), tokenizer(), tmp_path / "ckpt")
    out = tmp_path / "folder"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out / "train.py").write_text("print('mine')")
    export = ["export", "--model", str(ckpt), "--format", "hf", "--out", str(out)]
    assert cli(export) == 2
    assert "no lmforge-manifest.json" in capsys.readouterr().err and (out / "train.py").exists()
    assert cli([*export, "--force"]) == 0 and not (out / "train.py").exists()
    assert cli(export) == 0  # an earlier export holding only its own files is replaced
    (out / "notes.md").write_text("added by hand")
    assert cli(export) == 2
    assert "did not write: notes.md" in capsys.readouterr().err and (out / "notes.md").exists()
