"""The learning-efficiency options: model options, Muon + per-role learning rates (and their exact
checkpoint round trip), document-aligned windows and document masks, and the export refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, check_exportable, num_params
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.data import PretrainLoader, document_starts
from lmforge.train.optim import build_optimizer

EOS = 1


def model_cfg(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, max_seq_len=32, **kw)


def build(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(model_cfg(**kw))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"qk_norm": True},
        {"mlp": "relu2"},
        {"mlp": "gelu"},
        {"arch": "gpt2", "mlp": "relu2"},
        {"tie_embeddings": False},
    ],
)
def test_parameter_count_matches_the_model(kw):
    assert build(**kw).num_params() == num_params(model_cfg(**kw))


def test_qk_norm_makes_attention_invariant_to_query_key_scale():
    x = torch.randint(0, 64, (2, 16))
    for qk_norm, same in ((True, True), (False, False)):
        model = build(qk_norm=qk_norm).eval()
        before = model(x)
        with torch.no_grad():
            for block in model.layers.values():
                block.attn.wq.weight.mul_(10)
                block.attn.wk.weight.mul_(10)
        assert torch.allclose(before, model(x), atol=1e-4) == same


def test_relu2_mlp_squares_the_relu():
    model = build(mlp="relu2")
    mlp = model.layers["0"].mlp
    h = torch.randn(3, 32)
    assert torch.allclose(mlp(h), mlp.proj(torch.relu(mlp.fc(h)) ** 2))


def test_logit_softcap_bounds_the_logits():
    model = build(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    logits = model(torch.randint(0, 64, (2, 8)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9  # tanh saturates at the cap


def test_softcapped_logits_reach_scoring_as_the_forward_gives_them():
    from lmforge.inference.scoring import token_loglikelihoods

    model = build(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    ids = torch.randint(0, 64, (1, 12))
    context, continuation = ids[0, :6].tolist(), ids[0, 6:].tolist()
    [(total, _)] = token_loglikelihoods(model, [(context, continuation)])
    with torch.no_grad():
        logprobs = model(ids).float().log_softmax(-1)[0]
    expected = sum(logprobs[5 + i, tok].item() for i, tok in enumerate(continuation))
    assert total == pytest.approx(expected, abs=1e-4)


def test_zero_init_projections_make_every_block_the_identity():
    model = build(zero_init_proj=True)
    for block in model.layers.values():
        assert not block.attn.wo.weight.any() and not block.mlp.w2.weight.any()
        assert block.attn.wq.weight.std() > 0.01
    x = torch.randint(0, 64, (2, 8))
    h = model(x, return_hidden=True)
    assert torch.allclose(h, model.norm(model.tok_emb(x)), atol=1e-6)


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"qk_norm": True, "hf_family": "llama"}, "model.qk_norm"),  # QK-norm exports as Qwen3 only
        ({"mlp": "relu2"}, "model.mlp"),
        ({"logit_softcap": 15.0}, "model.logit_softcap"),
        ({"value_embeds": 1}, "model.value_embeds"),
    ],
)
def test_export_refuses_options_the_target_lacks(kw, named, tmp_path):
    from lmforge.model.convert import export_hf

    with pytest.raises(LmforgeError, match=named):
        export_hf(build(**kw), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    check_exportable(model_cfg(zero_init_proj=True, tie_embeddings=False), "GGUF")  # these export as they are


def test_gguf_export_refuses_qk_norm(tmp_path):
    pytest.importorskip("gguf")
    from lmforge.model.gguf import export_gguf

    with pytest.raises(LmforgeError, match="GGUF.*model.qk_norm"):
        export_gguf(build(qk_norm=True), None, tmp_path / "m.gguf")


# ---------------------------------------------------------------------------- optimizers


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build(tie_embeddings=False, arch="gpt2")
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, head_lr=4e-3))
    muon, adamw = list(opt)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2}
    groups = {g["name"]: g for g in adamw.param_groups}
    assert {names[id(p)] for p in groups["embedding"]["params"]} == {"tok_emb.weight", "pos_emb.weight"}
    assert [names[id(p)] for p in groups["head"]["params"]] == ["lm_head.weight"]
    assert all(p.dim() == 1 for p in groups["scalar"]["params"])
    assert groups["head"]["lr_scale"] == pytest.approx(4.0) and muon.param_groups[0][
        "lr_scale"
    ] == pytest.approx(20)


def test_muon_newton_schulz_is_torchs_iteration_at_the_chosen_precision():
    """In bf16 the iteration is torch's own bit for bit; the CPU default (float32) is torch's Muon
    step with that iteration in float32, torch's function is back in place after each step, and a
    bad muon_ns_dtype is refused."""
    from torch.optim import _muon

    from lmforge.train.optim import MuonAt, newton_schulz

    g = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    coeffs = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
    torch.testing.assert_close(
        newton_schulz(g, coeffs, 5, 1e-7, torch.bfloat16),
        _muon._zeropower_via_newtonschulz(g, coeffs, 5, 1e-7),
        rtol=0,
        atol=0,
    )
    fp32 = newton_schulz(g, coeffs, 5, 1e-7, torch.float32)
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(
        fp32, newton_schulz(g, coeffs, 5, 1e-7, torch.bfloat16).float(), atol=0.05, rtol=0
    )

    opt = build_optimizer(build(), TrainConfig(optimizer="muon"))
    assert isinstance(next(iter(opt)), MuonAt) and next(iter(opt)).ns_dtype == torch.float32

    w = torch.nn.Parameter(torch.randn(48, 32))
    w.grad = g.clone()
    before = w.detach().clone()
    MuonAt([w], ns_dtype=torch.float32, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0).step()
    assert _muon._zeropower_via_newtonschulz.__module__ == "torch.optim._muon"
    scale = max(1, 48 / 32) ** 0.5
    torch.testing.assert_close(w.detach(), before - 0.1 * scale * fp32)
    from lmforge.config import from_dict

    with pytest.raises(LmforgeError, match="muon_ns_dtype must be one of"):
        from_dict(TrainConfig, {"muon_ns_dtype": "float16"}, "train", "recipe.yaml")


def test_each_role_steps_at_its_own_learning_rate():
    """The trainer writes the scheduled lr into every group; the embedding group (embedding_lr
    = 3 x lr) must move exactly as plain AdamW at 3 x the scheduled lr, and the lr is restored."""
    model, ref = build(tie_embeddings=False), build(tie_embeddings=False)
    opt = build_optimizer(model, TrainConfig(lr=1e-2, embedding_lr=3e-2, weight_decay=0.0))
    ref_opt = torch.optim.AdamW(
        [ref.tok_emb.weight], lr=0.5 * 3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0
    )
    x = torch.randint(0, 64, (2, 8))
    for m, o in ((model, opt), (ref, ref_opt)):
        for g in o.param_groups:
            g["lr"] = 0.5 * 1e-2 if o is opt else g["lr"]
        m(x).square().mean().backward()
        o.step()
    torch.testing.assert_close(model.tok_emb.weight, ref.tok_emb.weight)
    assert {g["lr"] for g in opt.param_groups} == {0.5 * 1e-2}
    assert not torch.equal(model.lm_head.weight, build(tie_embeddings=False).lm_head.weight)


def test_muon_checkpoint_round_trip_resumes_exactly(tmp_path):
    """6 steps in one go == 3 steps, checkpoint, a new process-like Trainer resuming, 3 more: bitwise."""
    from lmforge.train.objectives import CausalLMObjective
    from lmforge.train.trainer import Trainer

    tokens = np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16)
    cfg = TrainConfig(
        optimizer="muon",
        max_steps=6,
        batch_tokens=64,
        micro_batch=4,
        seq_len=16,
        lr=1e-2,
        muon_lr=0.05,
        embedding_lr=2e-2,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=3,
        samples=0,
        log_every=1,
    )

    def losses(out, max_steps):
        c = dataclasses.replace(cfg, max_steps=max_steps)
        torch.manual_seed(0)
        Trainer(
            build(), CausalLMObjective(), PretrainLoader(tokens, 4, 16, 0), c, out, model_cfg=model_cfg()
        ).fit()
        import json

        return [
            json.loads(line)["loss"]
            for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line
        ]

    straight = losses(tmp_path / "a", 6)
    losses(tmp_path / "b", 3)
    resumed = losses(tmp_path / "b", 6)
    assert resumed == straight
    assert straight[0] != straight[-1]


# ---------------------------------------------------------------------------- document-aware data


def corpus() -> np.ndarray:
    rng = np.random.default_rng(1)
    docs = [rng.integers(2, 64, n) for n in (40, 7, 90, 33, 60)]
    return np.concatenate([np.append(d, EOS) for d in docs]).astype(np.uint16)


def test_document_windows_start_at_a_separator_and_resume():
    toks = corpus()
    starts = document_starts(toks, EOS, 16)
    assert starts[0] == 0 and all(s + 17 <= len(toks) for s in starts)
    assert set(np.flatnonzero(toks[:-17] == EOS)) <= set(starts)  # every document's opening is a start
    a = PretrainLoader(toks, 4, 16, seed=3, window_start="document", eos_id=EOS)
    first = [a.next()["input_ids"] for _ in range(5)]
    heads = torch.cat(first)[:, 0]
    assert set(heads.tolist()) <= set(toks[starts].tolist())
    b = PretrainLoader(toks, 4, 16, seed=3, window_start="document", eos_id=EOS)
    b.load_state_dict(a.state_dict() | {"position": 2 * 4})
    assert torch.equal(b.next()["input_ids"], first[2])
    with pytest.raises(LmforgeError, match="eos"):
        PretrainLoader(toks, 4, 16, seed=3, window_start="document")


def test_document_mask_equals_running_each_document_alone():
    model = build().eval()
    a, b = torch.randint(2, 64, (1, 6)), torch.randint(2, 64, (1, 9))
    window = torch.cat([a, torch.tensor([[EOS]]), b], dim=1)
    toks = np.concatenate([window[0].numpy(), [5, 5]]).astype(np.uint16)
    batch = PretrainLoader(toks, 1, window.shape[1], seed=0, doc_mask=True, eos_id=EOS)
    from lmforge.train.data import document_mask

    extra = document_mask(window, EOS)
    masked = model(window, positions=extra["positions"], attn_mask=extra["attn_mask"])
    torch.testing.assert_close(masked[:, :6], model(a), atol=1e-5, rtol=0)
    second = torch.cat([torch.tensor([[EOS]]), b], dim=1)  # the separator opens the next document
    torch.testing.assert_close(masked[:, 6:], model(second), atol=1e-5, rtol=0)
    assert not torch.allclose(model(window)[:, 6:], model(second), atol=1e-3)
    assert set(batch.next()) == {"input_ids", "labels", "positions", "attn_mask"}
