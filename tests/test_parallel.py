"""Distributed training on real gloo processes (torchrun) against the single-process run.

Every layout trains the same tiny model on the same global batches for 4 steps and must give
the single-process loss curve (relative tolerance 1e-5: fp32, only the reduction order differs),
then the same validation loss and bits per byte on a held-out batch, and, loaded back from its
sharded checkpoint into one process, the same weights (abs 5e-5). Under tensor parallelism
the head's logits (every forward, pipelines included) must stay sharded over the vocabulary
(loss parallelism) unless `loss_parallel` is off.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dist_common  # noqa: E402
from lmforge.checkpoint.sharded import consolidate, full_state_dict, is_sharded, load_sharded  # noqa: E402
from lmforge.distributed import (  # noqa: E402
    DistContext,
    check_degrees,
    setup_distributed,
    split_for_pipeline,
    stage_layers,
    uses_loss_parallel,
)
from lmforge.distributed.config import ParallelConfig  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402

LOSS_RTOL, WEIGHT_ATOL = 1e-5, 5e-5
STEPS = [0, 4]

LAYOUTS_2 = [
    {"name": "ddp2", "parallel": {"dp_replicate": 2}},
    {"name": "fsdp2", "parallel": {"dp_shard": 2}},
    {"name": "tp2", "parallel": {"tp": 2}},
    {"name": "tp2-gathered", "parallel": {"tp": 2, "loss_parallel": False}},
    {"name": "pp2-gpipe", "parallel": {"pp": 2, "pp_schedule": "gpipe", "pp_microbatches": 4}},
    {"name": "pp2-1f1b", "parallel": {"pp": 2, "pp_schedule": "1f1b", "pp_microbatches": 4}},
    {"name": "tp2-gpt2-tied", "parallel": {"tp": 2}, "arch": "gpt2", "tied": True},
    {"name": "meta-fsdp2", "parallel": {"dp_shard": 2}, "meta": True, "steps": [0, 2]},
    {"name": "meta-pp2", "parallel": {"pp": 2}, "meta": True, "steps": [0, 2]},
]
LAYOUTS_4 = [
    {"name": "fsdp4", "parallel": {"dp_shard": 4}},
    {"name": "hsdp2x2", "parallel": {"dp_replicate": 2, "dp_shard": 2}},
    {"name": "fsdp2xtp2", "parallel": {"dp_shard": 2, "tp": 2}},
    {"name": "pp2xtp2", "parallel": {"pp": 2, "tp": 2, "pp_microbatches": 2}},
    {"name": "pp2xddp2", "parallel": {"pp": 2, "dp_replicate": 2, "pp_microbatches": 2}},
    # FSDP on 4 ranks trains 2 steps and saves; FSDP x TP loads it (fresh init otherwise) and goes on
    {"name": "fsdp4-half", "parallel": {"dp_shard": 4}, "steps": [0, 2]},
    {
        "name": "resume-fsdp2xtp2",
        "parallel": {"dp_shard": 2, "tp": 2},
        "steps": [2, 4],
        "resume": "fsdp4-half",
    },
]
LAYOUTS_4_SLOW = [
    {"name": "pp2xfsdp2", "parallel": {"pp": 2, "dp_shard": 2, "pp_microbatches": 2}},
    {"name": "ddp2xtp2", "parallel": {"dp_replicate": 2, "tp": 2}},
    {"name": "fsdp2xtp2-gpt2-tied", "parallel": {"dp_shard": 2, "tp": 2}, "arch": "gpt2", "tied": True},
]


def torchrun(nproc: int, out: Path, layouts: list[dict]) -> None:
    layouts = [{"steps": STEPS, **lay} for lay in layouts]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(Path(__file__).parent / "dist_worker.py"),
        str(out),
        json.dumps(layouts),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    torchrun(2, out, LAYOUTS_2)
    torchrun(4, out, LAYOUTS_4)
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    """Single-process losses, final weights and validation figures per model variant."""
    ref = {}
    for arch, tied in (("llama", False), ("gpt2", True)):
        model = dist_common.build(arch, tied)
        opt = dist_common.optimizer(model)
        losses = dist_common.train(model, opt, DistContext(), range(*STEPS))
        val = dist_common.validate(model, DistContext())
        ref[arch, tied] = (losses, {k: v.clone() for k, v in model.state_dict().items()}, val)
    return ref


def _full_layouts():
    return [lay for lay in LAYOUTS_2 + LAYOUTS_4 if "steps" not in lay]


def _check_layout(out: Path, reference: dict, layout: dict) -> None:
    ref_losses, ref_weights, ref_val = reference[layout.get("arch", "llama"), layout.get("tied", False)]
    losses = json.loads((out / layout["name"] / "losses.json").read_text())
    assert losses == pytest.approx(ref_losses, rel=LOSS_RTOL)
    assert ref_losses[0] != pytest.approx(ref_losses[-1], rel=1e-4)  # the model does train
    val = json.loads((out / layout["name"] / "val.json").read_text())
    assert (val["loss"], val["bpb"]) == pytest.approx((ref_val["loss"], ref_val["bpb"]), rel=LOSS_RTOL)
    par = layout["parallel"]
    sharded = par.get("tp", 1) > 1 and par.get("loss_parallel", True)
    assert val["logits"] == ("Shard(2)" if sharded else "full"), "the head gathered the logits"
    weights = full_state_dict(out / layout["name"])  # sharded checkpoint -> one process
    for key, ref in ref_weights.items():
        if key == "lm_head.weight" and key not in weights:
            continue
        torch.testing.assert_close(
            weights[key], ref, rtol=0, atol=WEIGHT_ATOL, msg=f"{layout['name']}: {key}"
        )


@pytest.mark.parametrize("layout", _full_layouts(), ids=lambda lay: lay["name"])
def test_layout_matches_single_process(runs, reference, layout):
    _check_layout(runs, reference, layout)


@pytest.mark.slow
def test_more_4_rank_layouts(reference, tmp_path):
    """Pipeline x FSDP, DDP x TP (replicated FSDP2 under TP) and GPT-2 with tied embeddings under
    FSDP x TP."""
    torchrun(4, tmp_path, LAYOUTS_4_SLOW)
    for layout in LAYOUTS_4_SLOW:
        _check_layout(tmp_path, reference, layout)


def test_resume_across_layouts(runs, reference):
    """FSDP x 4 checkpoint (weights + AdamW state) -> FSDP 2 x TP 2 continues the exact curve."""
    ref_losses, ref_weights, _ = reference["llama", False]
    losses = json.loads((runs / "resume-fsdp2xtp2" / "losses.json").read_text())
    assert losses == pytest.approx(ref_losses[2:], rel=LOSS_RTOL)
    weights = full_state_dict(runs / "resume-fsdp2xtp2")
    for key, ref in ref_weights.items():
        torch.testing.assert_close(weights[key], ref, rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("name", ["meta-fsdp2", "meta-pp2"])
def test_meta_device_build(runs, name):
    """build_parallel_model: never materialised whole, yet initialised like the plain model."""
    losses = json.loads((runs / name / "losses.json").read_text())
    assert losses[0] == pytest.approx(math.log(dist_common.VOCAB), abs=0.05)  # near-uniform predictions
    weights = full_state_dict(runs / name)
    assert set(weights) == set(dist_common.build().state_dict())
    for key, w in weights.items():
        if key.endswith("norm.weight"):
            assert (w - 1).abs().max() < 0.05, key  # ones, moved by 2 small steps
        else:
            assert 0.005 < float(w.std()) < 0.04, key  # Normal(0, 0.02), out-projections scaled down


def test_sharded_checkpoint_resumes_in_one_process(runs, reference):
    """FSDP on 4 ranks -> a single process (optimizer state included) gives the same next steps."""
    model = dist_common.build(seed=7)
    opt = dist_common.optimizer(model)
    load_sharded(model, opt, runs / "fsdp4-half")
    losses = dist_common.train(model, opt, DistContext(), range(2, 4))
    assert losses == pytest.approx(reference["llama", False][0][2:], rel=LOSS_RTOL)


def test_consolidate_to_safetensors(runs, reference, tmp_path):
    from safetensors.torch import load_file

    assert is_sharded(runs / "fsdp4") and not is_sharded(tmp_path)
    out = consolidate(runs / "fsdp4", tmp_path / "plain")
    model = dist_common.build(seed=3)
    model.load_state_dict(load_file(out / "model.safetensors"))
    for key, ref in reference["llama", False][1].items():
        torch.testing.assert_close(model.state_dict()[key], ref, rtol=0, atol=WEIGHT_ATOL)


def test_load_sharded_rejects_wrong_model(runs):
    wrong = dist_common.build("gpt2", True)
    with pytest.raises(LmforgeError, match="cannot load"):
        load_sharded(wrong, None, runs / "fsdp2")
    with pytest.raises(LmforgeError, match="not a sharded checkpoint"):
        full_state_dict(runs)


SFT_LAYOUTS = [
    {"name": "sft-tp2", "parallel": {"tp": 2}, "objective": "sft"},
    {"name": "sft-pp2", "parallel": {"pp": 2, "pp_microbatches": 2}, "objective": "sft"},
    {"name": "wrapped-tp2", "parallel": {"tp": 2}, "objective": "wrapped"},
    {
        "name": "wrapped-pp2-gpipe",
        "parallel": {"pp": 2, "pp_microbatches": 4, "pp_schedule": "gpipe"},
        "objective": "wrapped",
    },
]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> Path:
    return dist_common.run_layouts("sft_parallel_worker.py", tmp_path_factory.mktemp("sft-dist"), SFT_LAYOUTS)


def trainer_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("layout", SFT_LAYOUTS, ids=lambda lay: lay["name"])
def test_sft_under_tensor_and_pipeline_parallelism_matches_one_process(sft_runs, tmp_path, layout):
    """The sft stage's objective on packed rows (positions, block-diagonal mask): under TP 2 with
    loss parallelism (the logits never gathered) and under PP 2 it trains the single process's
    curve; so does a wrapper of another class that delegates the objective's hooks."""
    trainer, _ = dist_common.sft_trainer(tmp_path / "one", ParallelConfig(), DistContext())
    trainer.fit()
    want = trainer_losses(tmp_path / "one")
    assert len(want) == 3 and want[0] != pytest.approx(want[-1], rel=1e-3)
    run = sft_runs / layout["name"]
    assert trainer_losses(run) == pytest.approx(want, rel=LOSS_RTOL)
    seen = json.loads((run / "seen.json").read_text())
    tp = layout["parallel"].get("tp", 1) > 1
    assert seen == {"loss_parallel": tp, "pipeline": not tp, "logits": ["Shard(2)"] if tp else ["full"]}


# ---------------------------------------------------------------------------- no processes


def test_degrees_must_multiply_to_world_size():
    check_degrees(ParallelConfig(dp_shard=2, tp=2), 4)
    with pytest.raises(LmforgeError, match="multiply to 4 but the world size .* is 2"):
        check_degrees(ParallelConfig(dp_shard=2, tp=2), 2)
    with pytest.raises(LmforgeError, match="parallel.tp must be >= 1"):
        check_degrees(ParallelConfig(tp=0), 1)
    with pytest.raises(LmforgeError, match="pp_microbatches"):
        check_degrees(ParallelConfig(pp=4, pp_microbatches=2), 4)


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup_distributed(ParallelConfig(), "cpu")
    assert (ctx.world_size, ctx.dp_size, ctx.is_main, ctx.mesh) == (1, 1, True, None)
    with pytest.raises(LmforgeError, match="multiply to 2"):
        setup_distributed(ParallelConfig(dp_shard=2), "cpu")


def test_pipeline_split_keeps_names():
    assert [stage_layers(10, r, 4) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    with pytest.raises(LmforgeError, match="exceeds model.n_layer"):
        stage_layers(2, 0, 4)
    full = dist_common.build()
    names = set(full.state_dict())
    stages = []
    for r in range(2):
        m = dist_common.build()
        split_for_pipeline(m, r, 2)
        stages.append(set(m.state_dict()))
    assert stages[0] | stages[1] == names and not stages[0] & stages[1]
    assert (
        "tok_emb.weight" in stages[0]
        and "lm_head.weight" in stages[1]
        and "layers.3.attn.wq.weight" in stages[1]
    )
    with pytest.raises(LmforgeError, match="tie_embeddings"):
        split_for_pipeline(dist_common.build(tied=True), 0, 2)


def test_loss_parallel_applies_under_tensor_parallel():
    on, off = ParallelConfig(), ParallelConfig(loss_parallel=False)
    assert uses_loss_parallel(on, DistContext(tp_size=2))
    assert not uses_loss_parallel(off, DistContext(tp_size=2))
    assert not uses_loss_parallel(on, DistContext())  # nothing to shard
    assert uses_loss_parallel(on, DistContext(tp_size=2, pp_size=2))  # on the last stage
    assert not uses_loss_parallel(on, DistContext(tp_size=2), takes_sharded_logits=False)


def test_objectives_declare_what_parallelism_they_take():
    """The causal LM objective (pretraining and SFT) takes sharded logits and runs under pipelines;
    DPO, reward and GRPO read whole logits themselves and have no per-token stage loss."""
    from lmforge.posttrain.dpo import DPOObjective
    from lmforge.posttrain.grpo import GRPOObjective
    from lmforge.posttrain.reward import RewardObjective, new_value_head
    from lmforge.train.objectives import CausalLMObjective

    lm = CausalLMObjective()
    assert lm.takes_sharded_logits and lm.logits_loss is not None
    for other in (DPOObjective(beta=0.1), RewardObjective(new_value_head(8)), GRPOObjective()):
        assert not other.takes_sharded_logits and other.logits_loss is None
        assert other.token_nll(None, {}) is None and other.model_inputs({}) == {}
