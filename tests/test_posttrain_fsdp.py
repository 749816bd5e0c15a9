"""DPO with a frozen reference model and GRPO under FSDP2, through the CLI as a user launches them:
`lmforge dpo|rl` on 1 process and under `torchrun --nproc-per-node 2` with `--parallel.dp_shard 2`
(gloo, CPU), at the same global batch, take the same steps (per-step loss and gradient norm to
1e-5, the trained weights to 1e-5) and log the same metrics (DPO's reward margin and GRPO's reward
are means over every micro-batch of every rank, not rank 0's alone). Under FSDP the DPO reference is
built and sharded like the policy: each rank holds about half of its parameter bytes (the stage
reports them per rank).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.checkpoint.consolidated import list_checkpoints, load_model, save_model_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer

TESTS = Path(__file__).parent
TEXT = "to be or not to be, that is the question: whether tis nobler in the mind to suffer "
WORDS = TEXT.replace(",", "").replace(":", "").split()
GLOBAL_ROWS = 4  # pairs (DPO) or completions (GRPO) per micro-batch on 1 rank


def phrase(i: int, n: int) -> str:
    return " ".join(WORDS[(3 * i + k) % len(WORDS)] for k in range(n))


def make_run_dir(d: Path) -> Path:
    """A run directory with a tiny random pretrain checkpoint, preference pairs and RL prompts."""
    d.mkdir(parents=True)
    tok = Tokenizer.train([TEXT * 30], vocab_size=300, progress=False, workers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(n_layer=2, d_model=64, n_head=4, vocab_size=tok.vocab_size, max_seq_len=64)
    )
    save_model_checkpoint(
        model, tok, d / "pretrain" / "checkpoints" / "step_000001", stage="pretrain", step=1
    )
    pairs = [
        {
            "prompt": phrase(i, 2 + i % 3),
            "chosen": phrase(i + 1, 3 + i % 4),
            "rejected": phrase(i + 5, 2 + i % 3),
        }
        for i in range(8)
    ]
    (d / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    prompts = [{"prompt": phrase(i, 2 + i % 3)} for i in range(8)]
    (d / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    (d / "recipe.yaml").write_text("name: tiny\nseed: 0\n", encoding="utf-8")
    return d


def launch(verb: str, run_dir: Path, ranks: int, args: list[str]) -> str:
    """`lmforge VERB` on `ranks` processes (plain on 1, torchrun on more): its stdout."""
    prefix = [sys.executable]
    if ranks > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [
        *prefix,
        "-m",
        "lmforge",
        verb,
        str(run_dir / "recipe.yaml"),
        "--run_dir",
        str(run_dir),
        "--parallel.dp_shard",
        str(ranks),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def steps(run_dir: Path, stage: str) -> list[dict]:
    lines = (run_dir / stage / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def trained_weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    """The final checkpoint's weights (consolidated from 1 process, DCP shards from 2)."""
    return load_model(list_checkpoints(run_dir / stage / "checkpoints")[-1][1])[0].state_dict()


def assert_same_run(one: Path, two: Path, stage: str, metric: str) -> None:
    a, b = steps(one, stage), steps(two, stage)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
        assert y[metric] == pytest.approx(x[metric], abs=1e-5)
    assert a[-1]["loss"] != a[0]["loss"]  # it trained
    w1, w2 = trained_weights(one, stage), trained_weights(two, stage)
    assert w1.keys() == w2.keys()
    for name, value in w1.items():
        torch.testing.assert_close(w2[name], value, rtol=1e-5, atol=1e-5)


def train_args(section: str, lr: float) -> list[str]:
    return [
        f"--{section}.train.max_steps",
        "3",
        f"--{section}.train.seq_len",
        "64",
        f"--{section}.train.warmup_steps",
        "0",
        f"--{section}.train.lr",
        str(lr),
        f"--{section}.train.device",
        "cpu",
        f"--{section}.train.dtype",
        "float32",
    ]


def test_dpo_default_precomputes_the_reference_and_holds_no_second_model(tmp_path):
    from lmforge.distributed import setup_distributed
    from lmforge.posttrain.config import PreferenceTrainConfig
    from lmforge.posttrain.preference import sequence_logps, tokenize_pair
    from lmforge.recipe import load_recipe
    from lmforge.stages.posttrain import DPOStage, StageData
    from lmforge.tasks.chat_data import load_preferences

    d = make_run_dir(tmp_path / "run")
    model, tok = load_model(d / "pretrain" / "checkpoints" / "step_000001")
    pairs = [tokenize_pair(p, tok, 64) for p in load_preferences([str(d / "prefs.jsonl")])]
    recipe = load_recipe(None, {"seed": 0})
    assert recipe.dpo.precompute_ref
    ctx = setup_distributed(recipe.parallel, "cpu")
    cfg = PreferenceTrainConfig(micro_batch=2, seq_len=64, device="cpu")
    objective, loader = DPOStage(recipe, d).build(model, tok, cfg, StageData(None, pairs), ctx)
    assert objective.ref_model is None  # no second model during training
    batch = loader.next()
    with torch.no_grad():
        torch.testing.assert_close(batch["ref_logps"], sequence_logps(model, batch))  # the start's log-probs


def test_a_lora_model_reads_its_base_weights_with_no_random_init_first(tmp_path, monkeypatch):
    """A LoRA stage builds through `build_parallel_model`'s init_from although peft renames the weights
    it wraps: only the adapters are generated (materialize.regenerate, the full-tensor replay of a
    random init), the base weights come from the checkpoint, the adapters start as peft's (B zero)."""
    from lmforge.checkpoint.adapters import checkpoint_name
    from lmforge.distributed import materialize, setup_distributed
    from lmforge.posttrain.config import LoRAConfig
    from lmforge.recipe import load_recipe
    from lmforge.stages.posttrain import build_from

    ckpt = make_run_dir(tmp_path / "run") / "pretrain" / "checkpoints" / "step_000001"
    base = load_model(ckpt)[0].state_dict()
    generated: list[tuple[int, ...]] = []
    regenerate = materialize.regenerate

    def counting(shape, dtype, ops):
        generated.append(tuple(shape))
        return regenerate(shape, dtype, ops)

    monkeypatch.setattr(materialize, "regenerate", counting)
    recipe = load_recipe(None, {"seed": 0})
    ctx = setup_distributed(recipe.parallel, "cpu")
    model, _ = build_from(ckpt, recipe, ctx, lora=LoRAConfig(rank=4, targets=["wq", "wo"]), where="sft.lora")
    params = dict(model.named_parameters())
    adapters = {n: p for n, p in params.items() if ".lora_" in n}
    assert len(adapters) == 2 * 2 * 2  # A and B on wq and wo of 2 layers
    assert sorted(generated) == sorted(tuple(p.shape) for p in adapters.values())
    for name, p in params.items():
        if name not in adapters:
            torch.testing.assert_close(p.detach(), base[checkpoint_name(name)], rtol=0, atol=0)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in adapters.items() if ".lora_B." in n)
    assert all(float(p.detach().abs().sum()) > 0 for n, p in adapters.items() if ".lora_A." in n)


@pytest.mark.slow
def test_dpo_with_a_frozen_reference_under_fsdp_matches_one_process(tmp_path):
    runs = {}
    for ranks in (1, 2):
        d = make_run_dir(tmp_path / f"n{ranks}")
        args = [
            "--dpo.data",
            f"[{d / 'prefs.jsonl'}]",
            "--dpo.precompute_ref",
            "false",
            "--dpo.train.micro_batch",
            str(GLOBAL_ROWS // ranks),
            "--dpo.train.batch_tokens",
            str(GLOBAL_ROWS * 64),
            *train_args("dpo", 1e-3),
        ]
        runs[ranks] = (d, launch("dpo", d, ranks, args))
    assert_same_run(runs[1][0], runs[2][0], "dpo", "rewards/margins")
    held = {
        int(r): (int(local), int(full))
        for r, local, full in re.findall(
            r"frozen reference on rank (\d+): (\d+) of its (\d+) parameter bytes", runs[2][1]
        )
    }
    assert sorted(held) == [0, 1]
    full = held[0][1]
    assert sum(local for local, _ in held.values()) == full  # the shards make up the whole model once
    for local, _ in held.values():
        assert local <= 0.55 * full  # about half of it on each rank
    (one,) = re.findall(r"frozen reference on rank 0: (\d+) of its (\d+)", runs[1][1])
    assert one[0] == one[1] == str(full)  # one process holds all of it


@pytest.mark.slow
def test_grpo_under_fsdp_matches_one_process(tmp_path):
    """The policy and its k3 reference sharded over 2 ranks; each rank samples its own prompts from a
    plain copy of the gathered policy (lmforge.posttrain.grpo.RolloutLoader._engine)."""
    runs = {}
    for ranks in (1, 2):
        d = make_run_dir(tmp_path / f"n{ranks}")
        args = [
            "--rl.data",
            f"[{d / 'prompts.jsonl'}]",
            "--rl.eval_data",
            f"[{d / 'prompts.jsonl'}]",
            "--rl.eval_prompts",
            "3",
            "--rl.reward",
            "grpo_dist_worker:reward",
            "--rl.num_generations",
            "2",
            "--rl.prompts_per_step",
            "2",
            "--rl.max_new_tokens",
            "6",
            "--rl.beta",
            "0.05",
            "--rl.train.micro_batch",
            str(GLOBAL_ROWS),
            "--rl.train.batch_tokens",
            str(2 * GLOBAL_ROWS * 64),  # 2 rollouts per step on 1 rank, 1 on each of 2
            *train_args("rl", 1e-2),
        ]
        launch("rl", d, ranks, args)
        runs[ranks] = d
    assert_same_run(runs[1], runs[2], "rl", "reward")
    # the held-out reward: sampled from the gathered weights, the same on 2 ranks as in 1 process
    held = [json.loads((runs[n] / "rl" / "demo_eval.json").read_text())["held_out_reward"] for n in (1, 2)]
    assert held[0]["prompts"] == 3 and held[0]["before"] == held[1]["before"]
    assert held[0]["after"] == pytest.approx(held[1]["after"], abs=1e-6)
