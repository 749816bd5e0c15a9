"""GGUF export: read the file back with gguf's reader and check every tensor and the tokenizer metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interop_common import model, tokenizer

gguf = pytest.importorskip("gguf")

from lmforge.cli import main as cli  # noqa: E402
from lmforge.model.gguf import export_gguf, gguf_types, permute_rope, unpermute_rope  # noqa: E402
from lmforge.model.transformer import rope_cos_sin, rotate_half  # noqa: E402
from lmforge.tokenizer.tokenizer import hf_files  # noqa: E402


def read(path):
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items()}
    tensors = {t.name: t for t in r.tensors}
    return fields, tensors


def expected(ours) -> dict[str, torch.Tensor]:
    """What each GGUF tensor must hold, written out from our parameter names."""
    sd, cfg = ours.state_dict(), ours.cfg
    want = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        want["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        if cfg.arch == "llama":
            want |= {
                f"blk.{i}.attn_norm.weight": sd[p + "attn_norm.weight"],
                f"blk.{i}.attn_q.weight": permute_rope(sd[p + "attn.wq.weight"], cfg.n_head),
                f"blk.{i}.attn_k.weight": permute_rope(sd[p + "attn.wk.weight"], cfg.n_kv_head),
                f"blk.{i}.attn_v.weight": sd[p + "attn.wv.weight"],
                f"blk.{i}.attn_output.weight": sd[p + "attn.wo.weight"],
                f"blk.{i}.ffn_norm.weight": sd[p + "mlp_norm.weight"],
                f"blk.{i}.ffn_gate.weight": sd[p + "mlp.w1.weight"],
                f"blk.{i}.ffn_up.weight": sd[p + "mlp.w3.weight"],
                f"blk.{i}.ffn_down.weight": sd[p + "mlp.w2.weight"],
            }
        else:
            for k in ("weight", "bias"):
                qkv = torch.cat([sd[p + f"attn.{w}.{k}"] for w in ("wq", "wk", "wv")])
                want |= {
                    f"blk.{i}.attn_norm.{k}": sd[p + f"attn_norm.{k}"],
                    f"blk.{i}.attn_qkv.{k}": qkv,
                    f"blk.{i}.attn_output.{k}": sd[p + f"attn.wo.{k}"],
                    f"blk.{i}.ffn_norm.{k}": sd[p + f"mlp_norm.{k}"],
                    f"blk.{i}.ffn_up.{k}": sd[p + f"mlp.fc.{k}"],
                    f"blk.{i}.ffn_down.{k}": sd[p + f"mlp.proj.{k}"],
                }
    if cfg.arch == "gpt2":
        want |= {"position_embd.weight": sd["pos_emb.weight"], "output_norm.bias": sd["norm.bias"]}
    return want


@pytest.mark.parametrize(
    "arch,tie,dtype", [("llama", True, "f32"), ("llama", False, "f16"), ("gpt2", False, "f32")]
)
def test_every_tensor_round_trips(tmp_path, arch, tie, dtype):
    ours = model(arch=arch, tie=tie)
    path = export_gguf(ours, tokenizer(), tmp_path / "m.gguf", dtype=dtype)
    fields, tensors = read(path)
    want = expected(ours)
    assert set(tensors) == set(want)
    for name, t in tensors.items():
        w = want[name].numpy()
        assert tuple(t.data.shape) == w.shape, name
        if w.ndim == 1 or dtype == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(t.data, w, err_msg=name)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16, name
            np.testing.assert_array_equal(t.data, w.astype(np.float16), err_msg=name)
    cfg = ours.cfg
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.block_count"] == cfg.n_layer
    assert fields[f"{arch}.context_length"] == cfg.max_seq_len
    assert fields[f"{arch}.embedding_length"] == cfg.d_model
    assert fields[f"{arch}.feed_forward_length"] == cfg.d_ff
    assert fields[f"{arch}.attention.head_count"] == cfg.n_head
    if arch == "llama":
        assert fields["llama.attention.head_count_kv"] == cfg.n_kv_head
        assert fields["llama.rope.dimension_count"] == cfg.head_dim
        assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
        assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)


def test_tokenizer_metadata(tmp_path):
    tok = tokenizer()
    fields, _ = read(export_gguf(model(), tok, tmp_path / "m.gguf"))
    hf = hf_files(tok)["tokenizer.json"]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "llama-bpe"  # the gpt4 split pattern
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == tok.vocab_size
    assert {p: i for i, p in enumerate(tokens) if i < 256 + len(tok.merges)} == hf["model"]["vocab"]
    assert fields["tokenizer.ggml.merges"] == [f"{a} {b}" for a, b in hf["model"]["merges"]]
    types = fields["tokenizer.ggml.token_type"]
    for s, i in tok.special_ids.items():
        assert tokens[i] == s and types[i] == gguf.TokenType.CONTROL
    assert set(types[: 256 + len(tok.merges)]) == {gguf.TokenType.NORMAL}
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_id
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert fields["tokenizer.ggml.eot_token_id"] == tok.special_ids["<|end|>"]
    assert fields["tokenizer.chat_template"] == tok.chat_template_jinja
    # the token strings decode back to our bytes (HF byte-level spelling)
    from lmforge.tokenizer.tokenizer import bytes_to_unicode

    back = {c: b for b, c in bytes_to_unicode().items()}
    for i in range(0, 256 + len(tok.merges), 7):
        assert bytes(back[c] for c in tokens[i]) == tok.id_to_bytes(i)


def test_rope_permutation_matches_llama_cpp_interleaved_rope():
    """llama.cpp rotates adjacent pairs (x[2j], x[2j+1]); on permuted weights that must give the same
    attention scores as our rotate-half RoPE on the original weights."""
    ours = model(n_kv_head=2)
    cfg, attn = ours.cfg, ours.layers["0"].attn
    hd, T = cfg.head_dim, 12
    x = torch.randn(1, T, cfg.d_model)
    pos = torch.arange(T)[None]
    cos, sin = rope_cos_sin(ours.inv_freq, pos, torch.float32)

    def half(w, n):
        v = (x @ w.t()).view(1, T, n, hd).transpose(1, 2)
        return v * cos + rotate_half(v) * sin

    def interleaved(w, n):
        v = (x @ w.t()).view(1, T, n, hd).transpose(1, 2)
        ang = pos[0, :, None].float() * ours.inv_freq[None]  # [T, hd/2]
        a, b = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2] = a * ang.cos() - b * ang.sin()
        out[..., 1::2] = a * ang.sin() + b * ang.cos()
        return out

    wq, wk = attn.wq.weight.detach(), attn.wk.weight.detach()
    q1, k1 = half(wq, cfg.n_head), half(wk, cfg.n_kv_head)
    q2 = interleaved(permute_rope(wq, cfg.n_head), cfg.n_head)
    k2 = interleaved(permute_rope(wk, cfg.n_kv_head), cfg.n_kv_head)
    g = cfg.n_head // cfg.n_kv_head
    s1 = q1 @ k1.repeat_interleave(g, dim=1).transpose(-1, -2)
    s2 = q2 @ k2.repeat_interleave(g, dim=1).transpose(-1, -2)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(q1, interleaved(wq, cfg.n_head))  # without the permutation it would differ
    assert torch.equal(unpermute_rope(permute_rope(wq, cfg.n_head), cfg.n_head), wq)


def test_cli_gguf_export(tmp_path):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(model(), tokenizer(), tmp_path / "ckpt")
    out = tmp_path / "out" / "m.gguf"
    assert cli(["export", "--model", str(ckpt), "--format", "gguf", "--out", str(out), "--dtype", "f16"]) == 0
    fields, tensors = read(out)
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.Modelfile", "m.gguf"]  # no temp file left
    assert cli(["export", "--model", str(ckpt), "--format", "gguf", "--out", str(out), "--dtype", "q4"]) == 2


def test_unknown_or_unwritable_type_is_refused_with_the_accepted_list(tmp_path, capsys):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(model(), tokenizer(), tmp_path / "ckpt")
    unwritable = [t.name.lower() for t in gguf.GGMLQuantizationType if t.name.lower() not in gguf_types()]
    for dtype in ["q4", unwritable[0]]:
        out = tmp_path / f"{dtype}.gguf"
        export = ["export", "--model", str(ckpt), "--format", "gguf", "--out", str(out)]
        assert cli([*export, "--dtype", dtype]) == 2
        err = capsys.readouterr().err
        assert f"GGUF dtype {dtype!r}" in err and "q8_0, " in err and "f16" in err and "Traceback" not in err
        assert not out.exists()


def test_the_accepted_types_are_what_gguf_quantises():
    """Each listed type quantises in gguf.quants; each left out raises there (so none is missed)."""
    types = gguf_types()
    assert {"f32", "f16", "bf16", "q8_0", "q4_0"} <= set(types)
    for qtype in gguf.GGMLQuantizationType:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        row = np.ones((1, max(block, 256)), dtype=np.float32)
        if qtype.name.lower() in types:
            gguf.quants.quantize(row, qtype)
        elif f"MOSTLY_{qtype.name}" in gguf.LlamaFileType.__members__:
            with pytest.raises((NotImplementedError, gguf.quants.QuantError)):
                gguf.quants.quantize(row, qtype)


@pytest.mark.parametrize("dtype", sorted(gguf_types()))
def test_every_writable_type_round_trips(tmp_path, dtype):
    """Matrices hold gguf.quants' own encoding of our weights (and decode close to them); 1-D tensors
    and rows that do not split into the type's blocks are F32 / F16, as llama.cpp's converter does."""
    ours = model(tie=False)
    qtype = gguf_types()[dtype]
    fields, tensors = read(export_gguf(ours, tokenizer(), tmp_path / "m.gguf", dtype=dtype))
    assert fields["general.file_type"] == int(
        gguf.LlamaFileType["ALL_F32" if dtype == "f32" else f"MOSTLY_{dtype.upper()}"]
    )
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    want = expected(ours)
    assert set(tensors) == set(want)
    for name, t in tensors.items():
        w = want[name].numpy()
        if w.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
        else:
            kind = qtype if w.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == kind, name
        assert tuple(int(n) for n in reversed(t.shape)) == w.shape, name
        stored = np.asarray(t.data).reshape(-1).view(np.uint8)
        made = np.ascontiguousarray(gguf.quants.quantize(w, kind)).reshape(-1).view(np.uint8)
        np.testing.assert_array_equal(stored, made, err_msg=name)
        back = gguf.quants.dequantize(np.asarray(t.data), kind).reshape(w.shape)
        scale = np.abs(w).max()
        bound = {"f32": 0.0, "f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2}.get(dtype, 0.7)
        assert np.abs(back - w).max() <= bound * scale, (name, np.abs(back - w).max() / scale)


def test_q8_0_matrices_are_a_quarter_of_f32(tmp_path):
    ours = model()
    f32 = export_gguf(ours, tokenizer(), tmp_path / "a.gguf", dtype="f32").stat().st_size
    q8 = export_gguf(ours, tokenizer(), tmp_path / "b.gguf", dtype="q8_0").stat().st_size
    assert q8 < 0.45 * f32


@pytest.mark.parametrize("stage,chat", [("pretrain", False), ("sft", True)])
def test_ollama_modelfile_beside_the_gguf(tmp_path, stage, chat):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    tok = tokenizer()
    ckpt = save_model_checkpoint(model(), tok, tmp_path / "ckpt", stage=stage)
    out = tmp_path / "shakespeare.gguf"
    export = ["export", "--model", str(ckpt), "--format", "gguf", "--out", str(out)]
    assert cli([*export, "--dtype", "q8_0"]) == 0
    lines = (tmp_path / "shakespeare.Modelfile").read_text().splitlines()
    assert lines[0] == "FROM ./shakespeare.gguf"
    assert 'PARAMETER stop "<|end|>"' in lines and 'PARAMETER stop "<|eos|>"' in lines
    assert f"PARAMETER num_ctx {model().cfg.max_seq_len}" in lines
    template = next(line for line in lines if line.startswith("TEMPLATE"))
    if chat:  # Ollama's Go template renders the ids render_chat makes
        assert "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{- end }}<|assistant|>" in template
        assert template.startswith('TEMPLATE """<|bos|>')
    else:  # a text prompt starts a document, after <|eos|>, as lmforge generate feeds it
        assert template == 'TEMPLATE """<|eos|>{{ .Prompt }}"""'
    assert read(out)[0]["general.name"] == "shakespeare"


def test_gguf_out_that_exists_needs_force_and_a_directory_is_refused(tmp_path, capsys):
    from lmforge.checkpoint.consolidated import save_model_checkpoint

    ckpt = save_model_checkpoint(model(), tokenizer(), tmp_path / "ckpt")
    mine = tmp_path / "notes.gguf"
    mine.write_text("not yours to overwrite")
    export = ["export", "--model", str(ckpt), "--format", "gguf", "--out"]
    assert cli([*export, str(mine)]) == 2
    assert (
        f"{mine} exists; pass --force" in capsys.readouterr().err
        and mine.read_text() == "not yours to overwrite"
    )
    assert cli([*export, str(mine), "--force"]) == 0
    assert read(mine)[0]["general.architecture"] == "llama"
    assert cli([*export, str(tmp_path), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory" in err and "model.gguf" in err and "Traceback" not in err


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("gpt2", False)])
def test_transformers_gguf_loader_gives_same_logits_and_ids(tmp_path, arch, tie):
    """transformers' GGUF reader (which undoes llama.cpp's Q/K permutation for llama) is an
    independent consumer of the file: same logits, and its tokenizer from the metadata gives our ids."""
    transformers = pytest.importorskip("transformers")
    tok = tokenizer()
    # transformers reads gpt2.context_length into n_ctx, not n_positions (1024 by default): match it
    ours = model(arch=arch, n_kv_head=2, tie=tie, max_seq_len=1024 if arch == "gpt2" else 128)
    export_gguf(ours, tok, tmp_path / "m.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    x = torch.randint(0, tok.vocab_size, (2, 30))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    print(f"\n{arch} tie={tie}: max |logit diff| lmforge vs transformers-from-GGUF = {diff:.2e}")
    assert diff <= 1e-4
    if arch == "llama":
        hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
        for text in ("Hello world!", "To be, or not to be 12345", "héllo ✓ 😉", "a\n\n  b"):
            assert hf_tok.encode(text, add_special_tokens=False) == tok.encode_ordinary(text)


def test_padded_vocabulary(tmp_path):
    """Embedding rows beyond the tokenizer (a vocab padded to a round number) get placeholder tokens."""
    tok = tokenizer()
    ours = model(vocab_size=tok.vocab_size + 8)
    fields, tensors = read(export_gguf(ours, tok, tmp_path / "m.gguf"))
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == tok.vocab_size + 8 == tensors["token_embd.weight"].data.shape[0]
    assert tokens[-8:] == [f"[PAD{i}]" for i in range(tok.vocab_size, tok.vocab_size + 8)]
    assert set(types[-8:]) == {gguf.TokenType.USER_DEFINED}
