"""lm-eval's `local-completions` model scores a task through `lmforge serve` with the numbers of
`lmforge eval`: every request goes over HTTP (`echo`, `logprobs`, `max_tokens: 1`) to a live server
on 127.0.0.1; the tokenizer lm-eval uses is the checkpoint's own (its Hugging Face files) (nothing is
downloaded), and the task is a local YAML over the ARC fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("uvicorn")

from lmforge.checkpoint.consolidated import load_model, save_model_checkpoint  # noqa: E402
from lmforge.eval.api import evaluate_checkpoint  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.serve.config import ServerConfig  # noqa: E402
from serve_common import serving  # noqa: E402
from test_eval_helpers import small_tokenizer  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "eval"
TASK = f"""task: lf_arc_api
dataset_path: json
dataset_name: null
dataset_kwargs: {{data_files: "{FIX}/arc.jsonl"}}
test_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_lm_eval_local_completions_through_the_server_matches_lmforge_eval(tmp_path):
    from lm_eval.tasks import TaskManager

    tok = small_tokenizer()
    torch.manual_seed(3)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=512, init_std=0.08
    )
    ckpt = save_model_checkpoint(
        Transformer(cfg), tok, tmp_path / "run" / "pretrain" / "checkpoints" / "step_000001"
    )
    hf_tokenizer = ckpt / "tokenizer"  # a checkpoint's tokenizer/ holds the Hugging Face files too
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "lf_arc_api.yaml").write_text(TASK)

    ours = evaluate_checkpoint(ckpt, [f"arc:{FIX}/arc.jsonl"], progress=False)["tasks"]["arc:arc"]
    model, tokenizer = load_model(ckpt)
    with serving(model, tokenizer, ServerConfig(model_name="m", max_batch=4)) as (url, app):
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=(
                f"model=m,base_url={url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={hf_tokenizer},max_length={cfg.max_seq_len - 1},num_concurrent=4,max_retries=1"
            ),
            tasks=["lf_arc_api"],
            num_fewshot=0,
            task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
            log_samples=True,
        )
        served_requests = app.state.service.worker.stats["jobs"]
    theirs = out["results"]["lf_arc_api"]
    choices = sum(len(s["resps"]) for s in out["samples"]["lf_arc_api"])
    assert served_requests == choices > 0  # every log-likelihood went through the server
    for metric in ("acc", "acc_norm"):
        assert theirs[f"{metric},none"] == ours["metrics"][metric], metric
        assert theirs[f"{metric}_stderr,none"] == pytest.approx(ours["metrics"][f"{metric}_stderr"])
    # item by item, the log-likelihood of every choice agrees with lmforge's own scoring
    mine = evaluate_loglikelihoods(ckpt, out["samples"]["lf_arc_api"])
    got = [
        float(r[0][0])
        for s in sorted(out["samples"]["lf_arc_api"], key=lambda s: s["doc_id"])
        for r in s["resps"]
    ]
    assert got == pytest.approx(mine, rel=1e-4, abs=1e-4)


def evaluate_loglikelihoods(ckpt, samples) -> list[float]:
    """Each sample's (context, continuation) scored in-process by lmforge (lm-eval's encoding)."""
    from lmforge.inference.scoring import loglikelihoods

    model, tok = load_model(ckpt)
    pairs = [tuple(a) for s in sorted(samples, key=lambda s: s["doc_id"]) for a in s["arguments"]]
    return [lp for lp, _ in loglikelihoods(model, tok, [(str(c), str(x)) for c, x in pairs])]
