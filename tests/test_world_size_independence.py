"""The data order does not depend on the world size: step k's global batch is the same set of
windows (or SFT rows, preference pairs) on 1, 2 or 4 data-parallel ranks. Through the command
line under torchrun, DDP 2, FSDP 2 and FSDP 2 x TP 2 reproduce the single-process loss curve,
and a run checkpointed on 2 ranks resumes on 1 rank and on 4 with the uninterrupted run's losses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.model.loss import IGNORE_INDEX
from lmforge.posttrain.sampler import EpochSampler
from lmforge.train.data import PretrainLoader, val_batches
from test_parallel_trainer import SMALL, prepared, pretrain  # noqa: F401  (prepared: the module fixture)

ROOT = Path(__file__).parent.parent
GLOBAL_BATCH = 16  # windows per optimizer step in SMALL: batch_tokens 1024 / seq_len 64


def stream_tokens(n: int = 20_000, eos: int = 0) -> np.ndarray:
    rng = np.random.default_rng(5)
    toks = rng.integers(1, 300, size=n).astype(np.uint16)
    toks[rng.choice(n, size=n // 200, replace=False)] = eos  # documents of ~200 tokens
    return toks


def step_windows(toks: np.ndarray, dp_size: int, micro_batch: int, steps: int, **kw) -> list[list[bytes]]:
    """For each optimizer step, the sorted windows all ranks together trained on."""
    accum = GLOBAL_BATCH // (micro_batch * dp_size)
    loaders = [PretrainLoader(toks, micro_batch, 32, 7, r, dp_size, **kw) for r in range(dp_size)]
    out = []
    for _ in range(steps):
        batches = [ld.next()["input_ids"] for _ in range(accum) for ld in loaders]
        out.append(sorted(row.numpy().tobytes() for batch in batches for row in batch))
    return out


@pytest.mark.parametrize("kw", [{}, {"window_start": "document", "doc_mask": True, "eos_id": 0}],
                         ids=["random", "document"])
def test_every_step_trains_on_the_same_windows_whatever_the_world_size(kw):
    toks = stream_tokens()
    single = step_windows(toks, 1, 4, steps=6, **kw)
    assert len(set(single[0])) > 1 and single[0] != single[1]
    for dp_size, micro_batch in ((2, 4), (4, 4), (4, 2), (2, 8)):
        assert step_windows(toks, dp_size, micro_batch, steps=6, **kw) == single, (dp_size, micro_batch)


def test_loader_state_resumes_on_another_number_of_ranks():
    toks = stream_tokens()
    want = step_windows(toks, 1, 4, steps=5)
    two = [PretrainLoader(toks, 4, 32, 7, r, 2) for r in range(2)]
    for _ in range(3 * 2):  # three steps of two micro-steps
        for ld in two:
            ld.next()
    state = json.loads(json.dumps(two[0].state_dict()))  # as state.json stores it
    assert state == two[1].state_dict()  # the position is global: every rank saves the same
    four = [PretrainLoader(toks, 4, 32, 7, r, 4) for r in range(4)]
    for ld in four:
        ld.load_state_dict(state)
    for step in (3, 4):
        assert sorted(row.numpy().tobytes() for ld in four for row in ld.next()["input_ids"]) == want[step]


def test_document_masks_follow_their_windows_on_every_rank():
    toks = stream_tokens()
    kw = {"window_start": "document", "doc_mask": True, "eos_id": 0}
    single = PretrainLoader(toks, 4, 32, 7, **kw).next()
    halves = [PretrainLoader(toks, 2, 32, 7, r, 2, **kw).next() for r in range(2)]
    for key in ("input_ids", "positions", "attn_mask"):
        assert torch.equal(torch.cat([h[key] for h in halves]), single[key])


def test_validation_scores_the_same_windows_for_any_number_of_ranks():
    toks = stream_tokens(5000)

    def scored(dp_size: int) -> tuple[list[bytes], set[int]]:
        rows, counts = [], set()
        for rank in range(dp_size):
            batches = list(val_batches(toks, 4, 32, 32 * 22, rank, dp_size))
            counts.add(len(batches))
            labels = [lab for b in batches for lab in b["labels"]]
            rows += [lab.numpy().tobytes() for lab in labels if (lab != IGNORE_INDEX).all()]
        return sorted(rows), counts

    want, _ = scored(1)
    assert len(want) == 22
    for dp_size in (2, 3, 4):
        rows, counts = scored(dp_size)
        assert rows == want and len(counts) == 1, dp_size  # every rank runs as many forwards


def test_epoch_sampler_steps_take_the_same_items_across_epochs_and_ranks():
    def epoch(e: int) -> list[int]:
        order = list(range(10))
        np.random.default_rng(e).shuffle(order)
        return [100 * e + i for i in order]

    def steps(dp_size: int, k: int, n: int, state=None) -> list[list[int]]:
        samplers = [EpochSampler(epoch, r, dp_size) for r in range(dp_size)]
        for s in samplers:
            if state:
                s.load_state_dict(state)
        per_step = 8 // (k * dp_size)
        taken = [sorted(x for _ in range(per_step) for s in samplers for x in s.take(k)) for _ in range(n)]
        return taken, samplers

    single, _ = steps(1, 4, 5)
    assert [x // 100 for x in single[1]] == [0, 0, 1, 1, 1, 1, 1, 1]  # a step across an epoch boundary
    assert steps(2, 2, 5)[0] == single and steps(4, 2, 5)[0] == single and steps(2, 4, 5)[0] == single
    _, two = steps(2, 2, 2)
    assert steps(4, 1, 3, two[0].state_dict())[0] == single[2:]


# ------------------------------------------------------------------ through the CLI under torchrun


def single_process(run_dir: Path, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "lmforge", "pretrain", "recipes/shakespeare.yaml", "--run_dir", str(run_dir),
           "--train.max_steps", str(steps), *SMALL, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_close_curve(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (got, want)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> tuple[Path, list[float]]:  # noqa: F811
    """The single-process run, 4 steps."""
    run = tmp_path_factory.mktemp("ws") / "single"
    shutil.copytree(prepared, run)
    single_process(run, 4)
    return run, losses(run)


@pytest.fixture(scope="module")
def fsdp2(prepared, tmp_path_factory) -> Path:  # noqa: F811
    """FSDP on 2 ranks, 4 steps, checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("ws") / "fsdp2"
    shutil.copytree(prepared, run)
    pretrain(run, 4, "--parallel.dp_shard", "2")
    return run


def test_ddp2_reproduces_the_single_process_curve(prepared, reference, tmp_path):  # noqa: F811
    run = tmp_path / "ddp2"
    shutil.copytree(prepared, run)
    pretrain(run, 4, "--parallel.dp_replicate", "2")
    assert_close_curve(losses(run), reference[1])


def test_fsdp2_reproduces_the_single_process_curve(fsdp2, reference):
    assert_close_curve(losses(fsdp2), reference[1])


def resumed_from_step_2(fsdp2: Path, tmp_path: Path) -> Path:
    run = tmp_path / "resumed"
    shutil.copytree(fsdp2, run)
    shutil.rmtree(run / "pretrain" / "checkpoints" / "step_000004")
    (run / "pretrain" / "_complete.json").unlink(missing_ok=True)
    return run


def test_checkpoint_of_2_ranks_resumes_on_1(fsdp2, reference, tmp_path):
    run = resumed_from_step_2(fsdp2, tmp_path)
    single_process(run, 4, "--train.resume", "always")
    assert_close_curve(losses(run), reference[1])


@pytest.mark.slow
def test_checkpoint_of_2_ranks_resumes_on_4(fsdp2, reference, tmp_path):
    run = resumed_from_step_2(fsdp2, tmp_path)
    pretrain(run, 4, "--parallel.dp_shard", "4", "--train.resume", "always", nproc=4)
    assert_close_curve(losses(run), reference[1])


@pytest.mark.slow
def test_fsdp2_x_tp2_reproduces_the_single_process_curve(prepared, tmp_path):  # noqa: F811
    untied = ["--model.tie_embeddings", "false"]
    single, run = tmp_path / "single", tmp_path / "fsdp2xtp2"
    shutil.copytree(prepared, single)
    shutil.copytree(prepared, run)
    single_process(single, 4, *untied)
    pretrain(run, 4, "--parallel.dp_shard", "2", "--parallel.tp", "2", *untied, nproc=4)
    assert_close_curve(losses(run), losses(single))
