"""The planner: Chinchilla arithmetic, memory scaling with the layout, and the activation count
checked against what autograd really saves (saved_tensors_hooks) for one block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmforge.cli import main as cli_main
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, num_params
from lmforge.model.transformer import Transformer, rope_cos_sin
from lmforge.plan import (
    Layout,
    activation_bytes_per_token_layer,
    budget_flops,
    compute_optimal,
    estimate_memory,
    preset_config,
    stage_params,
)


def test_chinchilla_70b():
    # Chinchilla: 70B parameters on 1.4T tokens = 5.88e23 FLOPs (6ND), 20 tokens/param
    plan = compute_optimal(6 * 70e9 * 1.4e12)
    assert plan.params == pytest.approx(70e9, rel=1e-9)
    assert plan.tokens == pytest.approx(1.4e12, rel=1e-9)
    assert plan.preset == "70b"
    assert 6 * plan.preset_params * plan.preset_tokens == pytest.approx(plan.flops)
    assert plan.preset_tokens_exact < plan.preset_tokens  # attention FLOPs make each token dearer


def test_budget_from_gpu_hours():
    assert budget_flops(gpu_hours=1000, mfu=0.4, peak=989e12) == pytest.approx(1000 * 3600 * 0.4 * 989e12)
    assert budget_flops(flops=1e20) == 1e20
    with pytest.raises(LmforgeError, match="compute budget"):
        budget_flops()
    with pytest.raises(LmforgeError, match="mfu"):
        budget_flops(gpu_hours=1, mfu=1.5)
    assert compute_optimal(1e17).preset in ("tiny", "mini", "small")


def test_stage_params_sum_to_model():
    for arch in ("llama", "gpt2"):
        cfg = preset_config("1b", 32768, arch)
        assert stage_params(cfg, Layout())[0] == num_params(cfg)
        half, _ = stage_params(cfg, Layout(pp=2))
        assert num_params(cfg) / 2 <= half < num_params(cfg) * 0.6


def test_memory_scales_with_layout():
    cfg = preset_config("1b", 32768)
    base = estimate_memory(cfg, Layout(), 2, 2048)
    assert base.params == 4 * num_params(cfg) and base.optimizer == 8 * num_params(cfg)
    fsdp = estimate_memory(cfg, Layout(dp_shard=8), 2, 2048)
    assert fsdp.params == pytest.approx(base.params / 8) and fsdp.activations == base.activations
    tp = estimate_memory(cfg, Layout(tp=2), 2, 2048)
    assert tp.activations == pytest.approx(base.activations / 2) and tp.params < 0.52 * base.params
    assert tp.logits == pytest.approx(base.logits / 2)  # loss parallelism: vocab-sharded logits
    gathered = estimate_memory(cfg, Layout(tp=2, loss_parallel=False), 2, 2048)
    assert gathered.logits == base.logits
    ac = estimate_memory(cfg, Layout(), 2, 2048, activation_checkpointing=True)
    assert ac.activations < base.activations / 4
    pp = estimate_memory(cfg, Layout(pp=2, pp_microbatches=4), 2, 2048)
    assert pp.activations < base.activations
    with pytest.raises(LmforgeError, match="must divide model.n_kv_head"):
        estimate_memory(cfg, Layout(tp=16), 1, 128)


def _saved_bytes_per_token(cfg: ModelConfig, B: int, T: int) -> float:
    """Bytes of the tensors autograd keeps for one block's backward (parameters excluded)."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    h = model.tok_emb(torch.randint(0, cfg.vocab_size, (B, T))).detach().requires_grad_()
    rope = (
        rope_cos_sin(model.inv_freq, torch.arange(T).expand(B, T), h.dtype)
        if model.inv_freq is not None
        else None
    )
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.layers["0"](h, rope)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params) / (B * T)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activation_count_matches_autograd(arch):
    cfg = ModelConfig(arch=arch, vocab_size=256, n_layer=2, d_model=256, n_head=4, max_seq_len=512)
    measured = _saved_bytes_per_token(cfg, 2, 512)
    assert activation_bytes_per_token_layer(cfg, 4) == pytest.approx(measured, rel=0.02)


def test_plan_cli(capsys):
    assert (
        cli_main(["plan", "--preset", "1b", "--dp-shard", "8", "--micro-batch", "2", "--gpu-memory", "80"])
        == 0
    )
    out = capsys.readouterr().out
    assert "dp_shard 8" in out and "fits in 80 GiB" in out
    total = float(next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("total")))
    est = estimate_memory(preset_config("1b", 32768), Layout(dp_shard=8), 2, 2048)
    assert math.isclose(total, est.total / 1024**3, abs_tol=0.01)
    assert cli_main(["plan", "--gpu-hours", "1000", "--gpu", "H100"]) == 0
    assert "nearest preset: 3b" in capsys.readouterr().out
    root = Path(__file__).parent.parent
    assert cli_main(["plan", str(root / "recipes/shakespeare.yaml"), "--parallel.dp_shard", "2"]) == 0
    out = capsys.readouterr().out
    assert "vocab 4096" in out and "dp_shard 2" in out  # the recipe's tokenizer size and the override
    assert cli_main(["plan", "--preset", "124m", "--tp", "5"]) == 2
    assert "must divide" in capsys.readouterr().err


def test_cpu_offload_moves_params_grads_optimizer_to_host():
    cfg = preset_config("1b", 32768)
    fsdp = estimate_memory(cfg, Layout(dp_shard=4), 2, 2048)
    offload = estimate_memory(cfg, Layout(dp_shard=4, cpu_offload=True), 2, 2048)
    assert offload.params == offload.grads == offload.optimizer == 0
    assert offload.host == pytest.approx(fsdp.params + fsdp.grads + fsdp.optimizer)
    assert offload.total == pytest.approx(fsdp.total - offload.host)
    with pytest.raises(LmforgeError, match="dp_shard"):
        estimate_memory(cfg, Layout(cpu_offload=True), 2, 2048)


def test_zero2_keeps_every_block_gathered():
    cfg = preset_config("1b", 32768)
    zero3 = estimate_memory(cfg, Layout(dp_shard=4), 2, 2048)
    zero2 = estimate_memory(cfg, Layout(dp_shard=4, reshard_after_forward=False), 2, 2048)
    block = (
        zero3.fsdp_buffers / 8
    )  # ZeRO-3: 2 gathered bf16 blocks (2 x 2 bytes) + one block's fp32 grads (4)
    assert zero2.fsdp_buffers == pytest.approx(cfg.n_layer * 2 * block + 4 * block)
    assert zero2.params == zero3.params and zero2.optimizer == zero3.optimizer
