"""Checkpoint format: round trip, tied weights stored once, resolution order, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from lmforge.checkpoint.consolidated import (
    list_checkpoints,
    load_model,
    prune_checkpoints,
    resolve_checkpoint,
    save_model_checkpoint,
    write_checkpoint,
)
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["to be or not to be, that is the question " * 20], vocab_size=280)


def model_for(tok, arch="llama", tie=True) -> Transformer:
    torch.manual_seed(1)
    return Transformer(
        ModelConfig(
            arch=arch,
            vocab_size=tok.vocab_size,
            n_layer=2,
            d_model=32,
            n_head=4,
            n_kv_head=2 if arch == "llama" else 4,
            max_seq_len=32,
            tie_embeddings=tie,
            preset="",
            depth=0,
        )
    )


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("gpt2", True)])
def test_round_trip_gives_identical_logits(tok, tmp_path, arch, tie):
    model = model_for(tok, arch, tie)
    out = save_model_checkpoint(model, tok, tmp_path / "ck", stage="import", step=0, extra={"note": 1})
    loaded, tok2 = load_model(out)
    x = torch.randint(0, tok.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert tok2.hash == tok.hash and not loaded.training
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not tie)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"] == "import" and cfg["tokenizer_hash"] == tok.hash and cfg["arch_extra"] == {"note": 1}
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()


def test_resolution_order_checkpoint_stage_run(tok, tmp_path):
    model = model_for(tok)
    run = tmp_path / "run"
    for stage, steps in (("pretrain", (10, 20)), ("sft", (5,)), ("reward", (99,))):
        for s in steps:
            write_checkpoint(run / stage / "checkpoints", s, model, tok, stage=stage)
    assert resolve_checkpoint(run).parts[-3:] == ("sft", "checkpoints", "step_000005")
    assert resolve_checkpoint(run / "pretrain").name == "step_000020"
    assert resolve_checkpoint(run / "pretrain" / "checkpoints").name == "step_000020"
    assert resolve_checkpoint(run / "pretrain" / "checkpoints" / "step_000010").name == "step_000010"
    # a temp dir left by a killed writer is never picked
    (run / "sft" / "checkpoints" / ".tmp-step_000009-x").mkdir()
    assert resolve_checkpoint(run / "sft").name == "step_000005"


def test_missing_or_corrupt_checkpoints_are_clear_errors(tok, tmp_path):
    with pytest.raises(LmforgeError, match="no such"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmforgeError, match="no checkpoint found"):
        load_model(tmp_path / "empty")
    ck = save_model_checkpoint(model_for(tok), tok, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LmforgeError, match="cannot read weights"):
        load_model(ck)
    ck2 = save_model_checkpoint(model_for(tok), tok, tmp_path / "ck2")
    (ck2 / "model.safetensors").unlink()
    with pytest.raises(LmforgeError, match="incomplete checkpoint"):
        load_model(ck2)
    ck3 = save_model_checkpoint(model_for(tok), tok, tmp_path / "ck3")
    cfg = json.loads((ck3 / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    (ck3 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match="do not match"):
        load_model(ck3)


def test_prune_keeps_last_k_and_best(tok, tmp_path):
    model = model_for(tok)
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3, 4, 5):
        write_checkpoint(root, s, model, tok, stage="pretrain")
    (root / "best.json").write_text(json.dumps({"step": 2, "val_loss": 1.0}))
    prune_checkpoints(root, keep_last=2)
    assert [s for s, _ in list_checkpoints(root)] == [2, 4, 5]


def test_overwriting_a_checkpoint_is_atomic_replacement(tok, tmp_path):
    model = model_for(tok)
    ck = save_model_checkpoint(model, tok, tmp_path / "ck", step=1)
    with torch.no_grad():
        model.norm.weight.fill_(2.0)
    save_model_checkpoint(model, tok, tmp_path / "ck", step=2)
    loaded, _ = load_model(ck)
    assert float(loaded.norm.weight[0].detach()) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp or .old leftovers
    shutil.rmtree(ck)


def test_load_model_matches_transformers_llama(tok, tmp_path):
    """A loaded checkpoint computes what transformers' LlamaForCausalLM computes on the same weights."""
    transformers = pytest.importorskip("transformers")
    model = model_for(tok, tie=False)
    loaded, _ = load_model(save_model_checkpoint(model, tok, tmp_path / "ck"))
    c = loaded.cfg
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    rename = {"tok_emb": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
    sd = {}
    for k, v in loaded.state_dict().items():
        head, _, rest = k.partition(".")
        if head == "layers":
            i, sub = rest.split(".", 1)
            sub = (
                sub.replace("attn_norm", "input_layernorm")
                .replace("mlp_norm", "post_attention_layernorm")
                .replace("attn.w", "self_attn.")
                .replace("mlp.w1", "mlp.gate_proj")
                .replace("mlp.w3", "mlp.up_proj")
                .replace("mlp.w2", "mlp.down_proj")
            )
            sub = sub.replace("self_attn.q", "self_attn.q_proj").replace("self_attn.k", "self_attn.k_proj")
            sub = sub.replace("self_attn.v", "self_attn.v_proj").replace("self_attn.o", "self_attn.o_proj")
            sd[f"model.layers.{i}.{sub}"] = v
        else:
            sd[f"{rename[head]}.{rest}"] = v
    hf.load_state_dict(sd, strict=True)
    x = torch.randint(0, tok.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, loaded(x), atol=1e-5)


# ---------------------------------------------------------------------------- the checkpoint manager


class Counter:
    """A loader whose state is how many batches it served."""

    def __init__(self):
        self.served = 0

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]


def manager_for(out, tok, config_hash="h1", keep_last=1, seed=1):
    from lmforge.checkpoint.manager import CheckpointManager

    model = model_for(tok)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mgr = CheckpointManager(
        out,
        model=model,
        raw_model=model,
        optimizer=opt,
        loader=Counter(),
        tokenizer=tok,
        stage="pretrain",
        config_hash=config_hash,
        keep_last=keep_last,
        device=torch.device("cpu"),
        run_files=("metrics.jsonl",),
        say=lambda _: None,
    )
    return mgr, model, opt


def adam_step(model, opt):
    model(torch.randint(0, model.cfg.vocab_size, (1, 8))).sum().backward()
    opt.step()
    opt.zero_grad()


def test_manager_resumes_weights_optimizer_loader_and_rng_and_keeps_the_best(tok, tmp_path):
    out = tmp_path / "pretrain"
    mgr, model, opt = manager_for(out, tok)
    adam_step(model, opt)
    mgr.loader.served = 5
    mgr.save(1, {"elapsed": 1.5}, val_loss=2.0)  # the best
    adam_step(model, opt)
    mgr.loader.served = 9
    mgr.save(2, {"elapsed": 3.0}, val_loss=2.5)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    mgr.save(3, {"elapsed": 4.0})
    expected_draw = torch.rand(3)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1, 3]  # keep_last 1, plus the best
    assert json.loads((out / "checkpoints" / "best.json").read_text())["step"] == 1

    fresh, model2, opt2 = manager_for(out, tok, seed=2)
    state = fresh.resume("auto")
    assert state["step"] == 3 and state["elapsed"] == 4.0 and fresh.saved_step == 3
    assert fresh.loader.served == 9 and fresh.best_val == 2.0
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert opt2.state_dict()["state"][0]["step"] == 2  # AdamW's moments came back
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG stream continues where step 3 saved it

    assert fresh.rollback() == 3
    with torch.no_grad():
        assert torch.equal(model2.norm.weight, want["norm.weight"])


def test_manager_starts_fresh_on_another_config_and_refuses_when_told_to_resume(tok, tmp_path):
    out = tmp_path / "pretrain"
    mgr, _, _ = manager_for(out, tok)
    mgr.save(1, {})
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(LmforgeError, match="config differs"):
        manager_for(out, tok, config_hash="h2")[0].resume("always")
    other, _, _ = manager_for(out, tok, config_hash="h2")
    assert other.resume("auto") is None and other.saved_step == -1
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert (tmp_path / "pretrain.previous" / "checkpoints" / "step_000001").is_dir()
    assert (tmp_path / "pretrain.previous" / "metrics.jsonl").exists()
    with pytest.raises(LmforgeError, match="no resumable checkpoint"):
        other.resume("always")
    with pytest.raises(LmforgeError, match="no checkpoint to roll back to"):
        other.rollback()


def test_manager_rejects_a_torn_optimizer_file(tok, tmp_path):
    out = tmp_path / "pretrain"
    mgr, _, _ = manager_for(out, tok)
    d = mgr.save(1, {})
    (d / "optimizer.pt").write_bytes(b"\x80\x02 not a torch file")
    with pytest.raises(LmforgeError, match="cannot read optimizer state"):
        manager_for(out, tok)[0].resume("auto")
