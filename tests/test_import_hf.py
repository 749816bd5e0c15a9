"""`lmforge import --from-hf`: local transformers checkpoints (built here, nothing downloaded) -> lmforge."""

from __future__ import annotations

import json

import pytest
import torch

from interop_common import SAMPLES, TEXTS, tokenizer

transformers = pytest.importorskip("transformers")

from lmforge.checkpoint.consolidated import load_model  # noqa: E402
from lmforge.cli import main as cli  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.model.convert import tokenizer_from_hf  # noqa: E402
from lmforge.model.hf_import import load_hf  # noqa: E402


def llama_dir(path, vocab_size, tie=False, **kw):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=2000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        initializer_range=0.08,
        **kw,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm mapping shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(path, max_shard_size="100KB")  # sharded safetensors + index
    return hf


def test_llama_import_same_logits_and_finetunable(tmp_path):
    tok = tokenizer()
    hf = llama_dir(tmp_path / "hf", tok.vocab_size)
    tok.save_hf(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert cli(["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    model, tok2 = load_model(tmp_path / "ckpt")
    assert tok2.hash == tok.hash and model.cfg.rope_theta == 2000.0 and model.cfg.n_kv_head == 2
    x = torch.randint(0, tok.vocab_size, (2, 50))
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    print(f"\nimported LlamaForCausalLM: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    # it fine-tunes: a few AdamW steps on one batch lower the loss
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.tensor([tok.encode_ordinary(TEXTS[0])])
    losses = []
    for _ in range(5):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_foreign_id_layout_is_reordered(tmp_path):
    """An HF-trained byte-level BPE (specials first, bytes in HF's alphabet order) maps onto our layout."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(TEXTS * 5, trainer)
    (tmp_path / "hf").mkdir()
    t.save(str(tmp_path / "hf" / "tokenizer.json"))
    hf = llama_dir(tmp_path / "hf", t.get_vocab_size(), tie=True)
    model, tok, report = load_hf(tmp_path / "hf")
    assert report["reordered"] and tok.special_ids == {
        "<|endoftext|>": tok.vocab_size - 2,
        "<|pad|>": tok.vocab_size - 1,
    }
    order = report["hf_ids"]
    for text in SAMPLES + TEXTS:
        ours = tok.encode_ordinary(text)
        assert [order[i] for i in ours] == t.encode(text).ids
        assert tok.decode(ours) == text
    ids = tok.encode_ordinary(TEXTS[1])
    with torch.no_grad():
        a = model(torch.tensor([ids]))
        b = hf(torch.tensor([[order[i] for i in ids]])).logits[..., order]
    print(f"\nimported with reordered vocabulary: max |logit diff| = {(a - b).abs().max().item():.2e}")
    assert (a - b).abs().max().item() <= 1e-4


def test_gpt2_import(tmp_path):
    tok = tokenizer()
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save_hf(tmp_path / "hf")
    model, tok2, report = load_hf(tmp_path / "hf")
    assert model.cfg.arch == "gpt2" and not report["reordered"]
    x = torch.randint(0, tok.vocab_size, (2, 30))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_unsupported_checkpoints_are_refused(tmp_path):
    tok = tokenizer()
    llama_dir(tmp_path / "hf", tok.vocab_size)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    bad = {
        "rope scaling 'yarn'": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0, "factor": 8.0}},
        "attention biases on the output projection": {"attention_bias": True},
        "MLP biases": {"mlp_bias": True},
        "model_type 'gemma'": {"model_type": "gemma"},
    }
    for message, patch in bad.items():
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **patch}))
        with pytest.raises(LmforgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    model, tok2, report = load_hf(tmp_path / "hf")  # no tokenizer.json: weights only
    assert tok2 is None and "no tokenizer.json" in report["tokenizer_note"]
    assert cli(["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "c")]) == 2
    assert cli(["import", "--from-hf", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2


def test_tokenizer_with_prefix_space_is_refused(tmp_path):
    tok = tokenizer()
    tok.save_hf(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(LmforgeError, match="prefix space"):
        tokenizer_from_hf(tmp_path / "tokenizer.json")


def test_pytorch_model_bin(tmp_path):
    """Old-style checkpoints: pytorch_model.bin read with torch.load(weights_only=True)."""
    import shutil

    from lmforge.model.convert import read_hf_weights

    tok = tokenizer()
    hf = llama_dir(tmp_path / "hf", tok.vocab_size)
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "bin" / "config.json")
    torch.save(read_hf_weights(tmp_path / "hf"), tmp_path / "bin" / "pytorch_model.bin")
    tok.save_hf(tmp_path / "bin")
    model, _, _ = load_hf(tmp_path / "bin")
    x = torch.randint(0, tok.vocab_size, (1, 20))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(LmforgeError, match="pytorch_model.bin"):
        load_hf(tmp_path / "bin")


def test_import_refuses_an_out_it_did_not_write(tmp_path, capsys):
    tok = tokenizer()
    llama_dir(tmp_path / "hf", tok.vocab_size)
    tok.save_hf(tmp_path / "hf")
    run = tmp_path / "runs" / "shakespeare"
    (run / "pretrain").mkdir(parents=True)
    (run / "config.yaml").write_text("name: shakespeare\n")
    imp = ["import", "--from-hf", str(tmp_path / "hf"), "--out"]
    assert cli([*imp, str(run)]) == 2
    assert f"{run} is not empty and was not written by lmforge import" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "pretrain"]
    assert cli([*imp, str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "lmforge-manifest.json").exists()
    assert cli([*imp, str(tmp_path / "ckpt")]) == 0  # an earlier import is replaced
    assert load_model(tmp_path / "ckpt")[0].cfg.d_model == 64
    assert cli([*imp, str(run), "--force"]) == 0 and not (run / "config.yaml").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["shakespeare"]  # no temp left beside it


def test_index_pointing_outside_the_model_folder_is_refused(tmp_path):
    tok = tokenizer()
    llama_dir(tmp_path / "a" / "hf", tok.vocab_size)
    index = tmp_path / "a" / "hf" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a" / "hf" / first).rename(tmp_path / "elsewhere" / "model.safetensors")
    for bad in ("../../elsewhere/model.safetensors", str(tmp_path / "elsewhere" / "model.safetensors")):
        data["weight_map"] = {k: (bad if v == first else v) for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data))
        with pytest.raises(
            LmforgeError, match="model.safetensors.index.json: weight file .* outside the model folder"
        ):
            load_hf(tmp_path / "a" / "hf")


def test_a_killed_import_leaves_nothing_after_the_next_one(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tok = tokenizer()
    llama_dir(tmp_path / "hf", tok.vocab_size)
    tok.save_hf(tmp_path / "hf")
    code = (
        "import os, signal, sys\n"
        "import lmforge.checkpoint.consolidated as c\n"
        "real = c.atomic_rename_dir\n"
        "c.atomic_rename_dir = lambda tmp, final: (os.kill(os.getpid(), signal.SIGKILL)"
        " if final.name == 'ckpt' else real(tmp, final))\n"
        "from lmforge.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out" / "ckpt")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name.startswith(".tmp-ckpt-") for p in (tmp_path / "out").iterdir()] == [True]
    assert cli(argv) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ckpt"]
