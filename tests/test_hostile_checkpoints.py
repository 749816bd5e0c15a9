"""Crafted checkpoint files never run code: every path that reads a checkpoint, run as a user runs it.

Each payload is a pickle whose unpickling would create a marker file. The run directory comes from
one real `lmforge run` (pretrain -> sft -> dpo -> reward -> rl, tiny); a payload is then planted
where a command reads, and the command must fail with a message naming the file (no traceback)
while the marker never appears.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lmforge.checkpoint.consolidated import list_checkpoints
from lmforge.data.embedded import embedded_documents
from lmforge.errors import LmforgeError
from lmforge.shards import tokenize_documents
from lmforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["pretrain", "sft", "dpo", "reward", "rl"]


class Payload:
    """Unpickling it runs `open(marker, "w")`: any code at all would run the same way."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def pickle_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


def torch_payload(path: Path, marker: Path) -> None:
    torch.save({"optimizer": Payload(marker)}, path)


def lmforge(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=300,
    )


def assert_refused(proc: subprocess.CompletedProcess, marker: Path, names: Path) -> None:
    assert not marker.exists(), "the payload ran"
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert str(names) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A recipe whose run directory holds real checkpoints of every training stage."""
    base = tmp_path_factory.mktemp("hostile")
    run_dir = base / "run"
    text = embedded_documents("shakespeare")[0][1][:60_000]
    docs = [text[i : i + 6000] for i in range(0, len(text), 6000)]
    tok = Tokenizer.train(docs, vocab_size=320)
    tok.save(run_dir / "tokenizer")
    tokenize_documents(tok, docs, run_dir / "tokens", val_fraction=0.2, seed=1, progress=False)
    tiny = {
        "max_steps": 2,
        "micro_batch": 2,
        "seq_len": 96,
        "batch_tokens": 192,
        "warmup_steps": 1,
        "samples": 0,
        "checkpoint_every": 1,
        "eval_every": 0,
    }
    demo = {"which_play": 8, "who_speaks": 4, "continue_speech": 4, "preference_pairs": 8, "eval_items": 4}
    recipe = {
        "name": "hostile",
        "seed": 3,
        "run_dir": str(run_dir),
        "stages": STAGES,
        "model": {"n_layer": 1, "d_model": 32, "n_head": 4, "max_seq_len": 128},
        "train": {**tiny, "seq_len": 32, "batch_tokens": 64, "eval_tokens": 256},
        "sft": {"demo": demo, "train": tiny},
        "dpo": {"train": tiny},
        "reward": {"train": tiny},
        "rl": {"train": tiny, "num_generations": 2, "prompts_per_step": 2, "max_new_tokens": 4},
    }
    path = base / "hostile.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = lmforge("run", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return path


def latest(recipe: Path, stage: str) -> Path:
    run_dir = Path(yaml.safe_load(recipe.read_text())["run_dir"])
    found = list_checkpoints(run_dir / stage / "checkpoints")
    assert found and (found[-1][1] / "state.json").exists()
    return found[-1][1]


@pytest.mark.parametrize("stage", STAGES)
def test_resume_reads_dcp_metadata_without_unpickling_it(run, stage, tmp_path):
    """The issue's path: resume -> is_sharded -> load_sharded -> DCP metadata. A plain rerun resumes too."""
    ckpt = latest(run, stage)
    marker = tmp_path / "ran"
    pickle_payload(ckpt / "dcp" / ".metadata", marker)
    (ckpt.parents[1] / "_complete.json").unlink(missing_ok=True)  # as after a run that was interrupted
    try:
        runs = [[stage, str(run)]] + ([["pretrain", str(run), "--resume"]] if stage == "pretrain" else [])
        for argv in runs:
            assert_refused(lmforge(*argv), marker, ckpt / "dcp" / ".metadata")
    finally:
        shutil.rmtree(ckpt / "dcp")


def test_resume_reads_optimizer_state_weights_only(run, tmp_path):
    ckpt = latest(run, "sft")
    marker = tmp_path / "ran"
    good = (ckpt / "optimizer.pt").read_bytes()
    torch_payload(ckpt / "optimizer.pt", marker)
    (ckpt.parents[1] / "_complete.json").unlink(missing_ok=True)
    try:
        assert_refused(lmforge("sft", str(run)), marker, ckpt / "optimizer.pt")
    finally:
        (ckpt / "optimizer.pt").write_bytes(good)


@pytest.fixture()
def hostile_checkpoint(run, tmp_path) -> tuple[Path, Path]:
    """A copy of a real checkpoint whose every pickle-shaped file is a payload, weights included."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(latest(run, "dpo"), ckpt)
    marker = tmp_path / "ran"
    pickle_payload(ckpt / "model.safetensors", marker)
    pickle_payload(ckpt / "dcp" / ".metadata", marker)
    torch_payload(ckpt / "optimizer.pt", marker)
    return ckpt, marker


@pytest.mark.parametrize(
    "verb",
    [
        ["generate", "--prompt", "ROMEO:", "--max-new-tokens", "2"],
        ["chat"],
        ["eval", "--tasks", "val_bpb"],
        ["export", "--format", "hf"],
        ["export", "--format", "gguf"],
        ["serve", "--port", "0"],
    ],
    ids=lambda v: "-".join(v[:3:2]),
)
def test_commands_that_load_a_model_read_only_safetensors(hostile_checkpoint, tmp_path, verb):
    ckpt, marker = hostile_checkpoint
    args = [verb[0], "--model", str(ckpt), *verb[1:]]
    if verb[0] == "export":
        args += ["--out", str(tmp_path / "out")]
    if verb[0] == "eval":
        args += ["--out", str(tmp_path / "results.json")]
    assert_refused(lmforge(*args, stdin="/exit\n"), marker, ckpt / "model.safetensors")


def test_import_reads_pytorch_model_bin_weights_only(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        '{"model_type": "llama", "vocab_size": 300, "num_hidden_layers": 1, '
        '"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}'
    )
    marker = tmp_path / "ran"
    torch_payload(hf / "pytorch_model.bin", marker)
    proc = lmforge("import", "--from-hf", str(hf), "--out", str(tmp_path / "ckpt"))
    assert_refused(proc, marker, hf / "pytorch_model.bin")
    assert not (tmp_path / "ckpt").exists()


# ------------------------------------------------------------------ the sharded reader itself


def sharded_checkpoint(tmp_path: Path, optim_value=None):
    """A real single-process DCP checkpoint of a tiny model + AdamW; optim_value replaces lr."""
    import torch.distributed.checkpoint as dcp

    from lmforge.checkpoint.sharded import _state
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, max_seq_len=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    state = _state(model, opt)
    if optim_value is not None:
        state["optim"]["param_groups"][0]["lr"] = optim_value
    dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    return model, opt


def test_non_tensor_values_in_shards_are_read_weights_only(tmp_path):
    """DCP's planner unpickles non-tensor values (param_groups) from the .distcp files with
    weights_only=False; lmforge's planner does not."""
    from lmforge.checkpoint.sharded import load_sharded

    marker = tmp_path / "ran"
    model, opt = sharded_checkpoint(tmp_path, optim_value=Payload(marker))
    with pytest.raises(LmforgeError, match=r"__0_0\.distcp: cannot read optim\.param_groups\.0\.lr"):
        load_sharded(model, opt, tmp_path)
    assert not marker.exists()


def test_metadata_allow_list_still_loads_real_checkpoints(tmp_path):
    from lmforge.checkpoint.sharded import full_state_dict, load_sharded

    model, opt = sharded_checkpoint(tmp_path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    opt.param_groups[0]["lr"] = 5.0
    load_sharded(model, opt, tmp_path)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 1e-3
    assert set(full_state_dict(tmp_path)) <= set(weights)


def test_metadata_pointing_outside_the_checkpoint_is_refused(tmp_path):
    from lmforge.checkpoint.sharded import read_metadata

    sharded_checkpoint(tmp_path)
    meta_path = tmp_path / "dcp" / ".metadata"
    meta = read_metadata(meta_path)
    for info in meta.storage_data.values():
        info.relative_path = "../../elsewhere/__0_0.distcp"
    meta_path.write_bytes(pickle.dumps(meta))
    with pytest.raises(LmforgeError, match="outside its checkpoint folder"):
        read_metadata(meta_path)


def test_rollback_reads_the_checkpoint_through_the_same_safe_path(tmp_path):
    """Guard rollbacks reload the last checkpoint mid-run; no command line reaches that point on
    demand, so the payload is planted by the poisoned objective right before the rollback."""
    from lmforge.train.data import PretrainLoader
    from lmforge.train.trainer import Trainer, grad_accum_steps
    from test_train_units import PoisonedObjective, tiny_model, tokens, train_cfg

    marker = tmp_path / "ran"
    cfg = train_cfg(max_steps=12, checkpoint_every=4, max_bad_steps=2, schedule="constant", warmup_steps=0)

    class PlantingObjective(PoisonedObjective):
        def loss(self, model, batch):
            if self.calls // self.accum + 1 == 6:
                pickle_payload(tmp_path / "checkpoints" / "step_000004" / "dcp" / ".metadata", marker)
            return super().loss(model, batch)

    t = Trainer(
        tiny_model(),
        PlantingObjective({6, 7}, grad_accum_steps(cfg)),
        PretrainLoader(tokens(), 4, 16, 0),
        cfg,
        tmp_path,
    )
    with pytest.raises(LmforgeError, match=r"step_000004/dcp/\.metadata"):
        t.fit()
    assert not marker.exists()


# ------------------------------------------------------------------ leftovers of a killed save

KILLED_AT_PUBLISH = (
    "import os, signal, sys\n"
    "import lmforge.checkpoint.consolidated as c\n"
    "c.atomic_rename_dir = lambda tmp, final: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from lmforge.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_save_killed_before_publishing_leaves_nothing_after_the_next_start(run):
    ckpts = latest(run, "pretrain").parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    argv = ["pretrain", str(run), "--train.max_steps", "3"]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AT_PUBLISH, *argv], capture_output=True, text=True, env=env
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    torn = [d for d in ckpts.iterdir() if d.name.startswith(".tmp-step_000003")]
    assert len(torn) == 1 and (torn[0] / "model.safetensors").exists()  # the kill hit mid-save
    assert [s for s, _ in list_checkpoints(ckpts)][-1] == 2
    proc = lmforge(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [d.name for d in ckpts.iterdir() if d.name.startswith(".")]
    assert [s for s, _ in list_checkpoints(ckpts)][-1] == 3
