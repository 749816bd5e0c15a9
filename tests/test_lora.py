"""LoRA post-training through peft (`sft.lora`, `dpo.lora`): only the adapters train, checkpoints hold
only them and a checked pointer to their base, every loader merges them, a killed run resumes
exactly, and the exports (merged, and PEFT's adapter format) compute what lmforge computes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.checkpoint.adapters import ADAPTER_WEIGHTS, read_info, weights_hash
from lmforge.checkpoint.consolidated import (
    WEIGHTS,
    list_checkpoints,
    load_model,
    save_model_checkpoint,
    write_adapter_checkpoint,
)
from lmforge.cli import main as cli_main
from lmforge.errors import LmforgeError
from lmforge.fileio import read_json
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.posttrain.config import LoRAConfig
from lmforge.posttrain.lora import add_adapters
from lmforge.recipe import load_recipe
from lmforge.tasks.demo import build_demo_tasks
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer

ROOT = Path(__file__).parent.parent
CFG = ModelConfig(n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, vocab_size=600, max_seq_len=128)
TARGETS = ["wq", "wk", "wv", "wo", "w2"]
LORA = {"rank": 4, "alpha": 8.0, "targets": TARGETS}
DEMO = {"which_play": 12, "who_speaks": 4, "continue_speech": 4, "preference_pairs": 12, "eval_items": 6}
TRAIN = {
    "max_steps": 4,
    "micro_batch": 2,
    "seq_len": 64,
    "batch_tokens": 256,  # 2 micro-batches per step in one process, one per rank on two
    "warmup_steps": 1,
    "lr": 1e-2,
    "samples": 0,
}


def overrides(run_dir: Path, **extra) -> dict:
    out = {"run_dir": str(run_dir), "seed": 3}
    out.update({f"sft.demo.{k}": v for k, v in DEMO.items()})
    out.update({f"sft.train.{k}": v for k, v in TRAIN.items()})
    out.update({f"sft.lora.{k}": v for k, v in LORA.items()})
    out.update(extra)
    return out


def cli_overrides(run_dir: Path, **extra) -> list[str]:
    return [a for k, v in overrides(run_dir, **extra).items() for a in (f"--{k}", json.dumps(v))]


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CFG)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A run directory with a random tiny pretrain checkpoint and a tokenizer trained on demo text."""
    d = tmp_path_factory.mktemp("lora") / "run"
    recipe = load_recipe(None, overrides(d))
    tasks = build_demo_tasks(recipe.sft.demo, recipe.seed)
    text = "\n".join(m["content"] for conv in tasks.sft for m in conv)
    tok = Tokenizer.train([text], vocab_size=600, progress=False, workers=1)
    save_model_checkpoint(tiny_model(), tok, d / "pretrain" / "checkpoints" / "step_000010", stage="pretrain")
    return d


def run_sft(run_dir: Path, **extra) -> None:
    from lmforge.stages.posttrain import sft_stage

    sft_stage(load_recipe(None, overrides(run_dir, **extra)), run_dir)


@pytest.fixture(scope="module")
def sft_run(base_run, tmp_path_factory) -> Path:
    """A LoRA SFT run of 4 steps, uninterrupted."""
    d = tmp_path_factory.mktemp("sft") / "run"
    shutil.copytree(base_run, d)
    run_sft(d)
    return d


def final_checkpoint(run_dir: Path, stage: str = "sft") -> Path:
    return list_checkpoints(run_dir / stage / "checkpoints")[-1][1]


def losses(run_dir: Path, stage: str = "sft") -> list[float]:
    rows = [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def peft_model(ckpt: Path) -> Transformer:
    """The base of `ckpt` with peft's adapters holding its tensors (not merged): the model as trained."""
    info = read_info(ckpt)
    model, _ = load_model(info["base"]["path"])
    lora = LoRAConfig(rank=info["rank"], alpha=info["alpha"], targets=info["targets"])
    spec_names = add_adapters(model, lora, info["base"])
    tensors = load_file(str(ckpt / ADAPTER_WEIGHTS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for m in spec_names:
            for x in "AB":
                params[f"{m}.lora_{x}.default.weight"].copy_(tensors[f"{m}.lora_{x}.weight"])
    return model.eval()


# ---------------------------------------------------------------------------- adapters on a model


def test_unknown_targets_are_refused_with_the_names_that_exist():
    with pytest.raises(LmforgeError, match=r"'q_proj'.*wq, wk, wv, wo, w1, w3, w2"):
        add_adapters(tiny_model(), LoRAConfig(rank=4, targets=["wq", "q_proj"]), {"hash": "x"}, "sft.lora")
    with pytest.raises(LmforgeError, match="lm_head"):
        add_adapters(tiny_model(), LoRAConfig(rank=4, targets=["lm_head"]), {"hash": "x"}, "sft.lora")
    assert load_recipe(None, {"sft.lora.rank": 8}).sft.lora.targets == ["wq", "wk", "wv", "wo"]
    with pytest.raises(LmforgeError, match="alpha must be positive"):
        load_recipe(None, {"dpo.lora.rank": 8, "dpo.lora.alpha": 0})


def test_only_the_adapters_train_and_start_from_the_base():
    """peft's B starts at zero (the adapted model computes the base's logits); every other weight is
    frozen and the optimizer holds the adapters only, so a step moves them alone."""
    base, model = tiny_model(), tiny_model()
    modules = add_adapters(model, LoRAConfig(rank=4, targets=["attn.wq", "layers.1.mlp.w2"]), {"hash": "x"})
    assert modules == ["layers.0.attn.wq", "layers.1.attn.wq", "layers.1.mlp.w2"]
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    assert torch.equal(model(x), base(x))
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters == {f"{m}.lora_{x}.default.weight" for m in modules for x in "AB"}
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in adapters}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in adapters if "lora_B" in n} | {n for n in adapters if "lora_A" in n}


# ---------------------------------------------------------------------------- checkpoints


def test_a_lora_sft_checkpoint_holds_only_the_adapters_and_loads_merged(sft_run, capsys):
    ckpt = final_checkpoint(sft_run)
    assert (ckpt / ADAPTER_WEIGHTS).exists() and not (ckpt / WEIGHTS).exists()
    tensors = load_file(str(ckpt / ADAPTER_WEIGHTS))
    info = read_info(ckpt)
    assert len(info["modules"]) == 2 * len(TARGETS) and len(tensors) == 2 * len(info["modules"])
    assert all(t.shape[0] == 4 or t.shape[1] == 4 for t in tensors.values())
    base = sft_run / "pretrain" / "checkpoints" / "step_000010"
    assert info["base"]["hash"] == weights_hash(base) and Path(info["base"]["path"]) == base.resolve()
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # trained away from zero
    # load_model (chat, generate, eval, the next stage) merges the adapters: the model as trained
    merged, _ = load_model(ckpt)
    plain, _ = load_model(base)
    x = torch.randint(0, CFG.vocab_size, (2, 24))
    with torch.no_grad():
        want = peft_model(ckpt)(x)
        assert torch.allclose(merged(x), want, atol=1e-5)
        assert not torch.allclose(plain(x), want, atol=1e-3)
    rc = cli_main(
        ["generate", "--model", str(sft_run / "sft"), "--prompt", "ROMEO:", "--max-new-tokens", "4"]
    )
    assert rc == 0 and capsys.readouterr().out.startswith("ROMEO:")


def synthetic_lora_run(run: Path, targets: list[str], **model) -> Tokenizer:
    """A run directory with a random base checkpoint and an adapter checkpoint of random adapters
    on it (written as a LoRA stage writes them), without training."""
    from lmforge.checkpoint.adapters import base_pointer

    tok = Tokenizer.train(["to be or not to be, that is the question"] * 4, vocab_size=300, progress=False)
    cfg = ModelConfig(**{"n_layer": 2, "d_model": 32, "n_head": 4, "max_seq_len": 32, **model})
    cfg.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    base_ckpt = save_model_checkpoint(Transformer(cfg), tok, run / "pretrain" / "checkpoints" / "step_000001")
    adapted = Transformer(cfg)
    add_adapters(adapted, LoRAConfig(rank=2, targets=targets), base_pointer(base_ckpt))
    params = dict(adapted.named_parameters())
    spec = adapted.adapter_spec
    tensors = {k: torch.randn_like(params[name]) for k, name in spec.params.items()}
    write_adapter_checkpoint(run / "sft" / "checkpoints", 1, tensors, cfg, tok, stage="sft", info=spec.info)
    return tok


def test_a_moved_run_loads_and_a_changed_or_missing_base_is_refused(tmp_path):
    """The base is found relative to the adapters when the run directory moves as a whole; changed
    or deleted, it is refused with its path and hash, never silently used."""
    run = tmp_path / "run"
    tok = synthetic_lora_run(run, ["wv"])
    x = torch.randint(0, tok.vocab_size, (1, 8))
    want = load_model(run / "sft")[0](x)
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    assert torch.equal(load_model(moved / "sft")[0](x), want)
    base_file = moved / "pretrain" / "checkpoints" / "step_000001" / WEIGHTS
    sd = load_file(str(base_file))
    sd["tok_emb.weight"][0, 0] += 1
    save_file(sd, str(base_file))
    with pytest.raises(LmforgeError, match="base checkpoint has changed since the adapters were trained"):
        load_model(moved / "sft")
    shutil.rmtree(moved / "pretrain")
    with pytest.raises(LmforgeError, match=r"base checkpoint .*step_000001 is gone \(moved or deleted\?\)"):
        load_model(moved / "sft")


def test_a_killed_lora_sft_resumes_exactly(base_run, sft_run, tmp_path, monkeypatch):
    """Killed after step 3 with a checkpoint at step 2, the rerun restores the adapters, the
    optimizer state, the data position and the RNG: steps 3-4 and the final adapters are those of
    the uninterrupted run, bit for bit."""
    from lmforge.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    step = Trainer.train_step

    def dies_after_step_3(self):
        if self.step == 3:
            raise KeyboardInterrupt("killed")
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", dies_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_sft(run, **{"sft.train.checkpoint_every": 2})
    assert [s for s, _ in list_checkpoints(run / "sft" / "checkpoints")] == [2]
    monkeypatch.setattr(Trainer, "train_step", step)
    run_sft(run, **{"sft.train.checkpoint_every": 2})
    assert losses(run) == losses(sft_run)
    got = load_file(str(final_checkpoint(run) / ADAPTER_WEIGHTS))
    want = load_file(str(final_checkpoint(sft_run) / ADAPTER_WEIGHTS))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------------------- export


def test_export_merged_and_as_a_peft_adapter_match_lmforge(sft_run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    ckpt = final_checkpoint(sft_run)
    common = ["export", "--model", str(ckpt), "--format", "hf"]
    assert cli_main([*common, "--out", str(tmp_path / "merged")]) == 0
    assert cli_main([*common, "--lora", "adapter", "--out", str(tmp_path / "adapter")]) == 0
    config = read_json(tmp_path / "adapter" / "adapter_config.json")
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    names = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in names
    model, _ = load_model(ckpt)
    x = torch.randint(0, CFG.vocab_size, (2, 20))
    with torch.no_grad():
        want = model(x)
        base = LlamaForCausalLM.from_pretrained(tmp_path / "adapter-base").eval()
        plain = base(x).logits
        got = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(x).logits
        merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()(x).logits
    assert torch.allclose(got, want, atol=1e-4) and torch.allclose(merged, want, atol=1e-4)
    assert not torch.allclose(plain, want, atol=1e-3)
    capsys.readouterr()
    rc = cli_main([*common[:2], str(sft_run / "pretrain"), "--lora", "adapter", "--out", str(tmp_path / "x")])
    assert rc != 0 and "not a LoRA checkpoint" in capsys.readouterr().err


def test_a_gpt2_adapter_export_fuses_q_k_v_into_c_attn(tmp_path):
    """GPT-2 keeps q, k, v in one Conv1D `c_attn`: the exported adapter stacks the adapted parts' A and
    puts their B block-diagonally, so PEFT on GPT2LMHeadModel computes lmforge's model."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    run = tmp_path / "run"
    tok = synthetic_lora_run(run, ["wq", "wv", "wo", "fc"], arch="gpt2", tie_embeddings=True, mlp="gelu")
    out = tmp_path / "adapter"
    assert cli_main(["export", "--model", str(run / "sft"), "--lora", "adapter", "--out", str(out)]) == 0
    config = read_json(out / "adapter_config.json")
    assert config["fan_in_fan_out"] and config["rank_pattern"] == {
        r"transformer\.h\.0\.attn\.c_attn": 4,
        r"transformer\.h\.1\.attn\.c_attn": 4,
    }
    x = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        want = load_model(run / "sft")[0](x)
        base = GPT2LMHeadModel.from_pretrained(tmp_path / "adapter-base").eval()
        plain = base(x).logits
        got = PeftModel.from_pretrained(base, out).eval()(x).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(plain, want, atol=1e-3)


# ---------------------------------------------------------------------------- DPO, and two processes


def test_lora_dpo_on_a_lora_sft_checkpoint(sft_run, tmp_path):
    """dpo.lora stacks adapters on the LoRA SFT checkpoint (a chain of two pointers); the final model
    loads with both merged, and only the DPO adapters changed in the DPO stage."""
    from lmforge.stages.posttrain import dpo_stage

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    extra = {f"dpo.train.{k}": v for k, v in {**TRAIN, "max_steps": 2, "batch_tokens": 128}.items()}
    extra.update({f"dpo.lora.{k}": v for k, v in LORA.items()})
    dpo_stage(load_recipe(None, overrides(run, **extra)), run)
    ckpt = final_checkpoint(run, "dpo")
    info = read_info(ckpt)
    assert Path(info["base"]["path"]) == final_checkpoint(run).resolve()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    with torch.no_grad():
        stacked, sft = load_model(ckpt)[0](x), load_model(final_checkpoint(run))[0](x)
    assert torch.isfinite(stacked).all() and not torch.allclose(stacked, sft, atol=1e-4)


def torchrun_sft(run_dir: Path, nproc: int, *args: str) -> None:
    recipe = run_dir / "recipe.yaml"  # every other key at its default, as the in-process run has it
    recipe.write_text("name: lora\n")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "lmforge", "sft", str(recipe), *cli_overrides(run_dir), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp_replicate", "dp_shard"])
def test_lora_sft_on_two_ranks_matches_one(base_run, sft_run, tmp_path, layout):
    """`torchrun --nproc-per-node 2 -m lmforge sft` with LoRA under DDP or FSDP2 trains the single
    process's adapters at the same global batch (one micro-batch per rank instead of two in turn)."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    torchrun_sft(run, 2, f"--parallel.{layout}", "2")
    assert losses(run) == pytest.approx(losses(sft_run), rel=1e-5)
    got = load_file(str(final_checkpoint(run) / ADAPTER_WEIGHTS))
    want = load_file(str(final_checkpoint(sft_run) / ADAPTER_WEIGHTS))
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert not (final_checkpoint(run) / WEIGHTS).exists() and not (final_checkpoint(run) / "dcp").exists()


def test_missing_peft_names_the_key_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(LmforgeError, match=r"sft\.lora\.rank > 0 needs the `peft` package.*lmforge\[lora\]"):
        add_adapters(tiny_model(), LoRAConfig(rank=2), base={}, where="sft.lora")
