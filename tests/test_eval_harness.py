"""lm-eval (the real harness, offline, local task YAMLs) and `lmforge eval` give the same numbers."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

from lmforge.checkpoint.consolidated import save_model_checkpoint  # noqa: E402
from lmforge.eval.api import evaluate_checkpoint  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from test_eval_helpers import small_tokenizer  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "eval"

YAMLS = {
    "lf_arc": """task: lf_arc
dataset_path: json
dataset_name: null
dataset_kwargs: {{data_files: "{fix}/arc.jsonl"}}
test_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "lf_hellaswag": """task: lf_hellaswag
dataset_path: json
dataset_name: null
dataset_kwargs: {{data_files: "{fix}/hellaswag.jsonl"}}
test_split: train
output_type: multiple_choice
process_docs: !function hellaswag_utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "lf_mmlu": """task: lf_mmlu
dataset_path: csv
dataset_name: null
dataset_kwargs: {{data_files: "{fix}/mmlu/test/astronomy_test.csv", \
column_names: [question, A, B, C, D, answer]}}
test_split: train
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about astronomy.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
""",
    "lf_text": """task: lf_text
dataset_path: json
dataset_name: null
dataset_kwargs: {{data_files: "{fix}/text.jsonl"}}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "lf_gen": """task: lf_gen
dataset_path: json
dataset_name: null
dataset_kwargs: {{data_files: "{fix}/gen.jsonl"}}
test_split: train
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer if answer is string else answer[0]}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 32, do_sample: false}}
metric_list:
  - metric: exact_match
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    tok = small_tokenizer()
    torch.manual_seed(1)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=48)
    )
    ckpt = save_model_checkpoint(
        model, tok, tmp / "run" / "pretrain" / "checkpoints" / "step_000007", stage="pretrain", step=7
    )
    tasks_dir = tmp / "tasks"
    tasks_dir.mkdir()
    for name, text in YAMLS.items():
        (tasks_dir / f"{name}.yaml").write_text(text.format(fix=FIX))
    shutil.copy(
        Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py", tasks_dir / "hellaswag_utils.py"
    )
    return ckpt, tasks_dir


def test_lm_eval_and_lmforge_eval_agree(setup):
    from lm_eval.tasks import TaskManager

    from lmforge.eval.harness import LmforgeLM

    ckpt, tasks_dir = setup
    out = lm_eval.simple_evaluate(
        model=LmforgeLM(path=str(ckpt), batch_size=4),
        tasks=list(YAMLS),
        num_fewshot=0,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        log_samples=True,
    )
    theirs = out["results"]
    ours = evaluate_checkpoint(
        ckpt,
        [
            f"arc:{FIX}/arc.jsonl",
            f"hellaswag:{FIX}/hellaswag.jsonl",
            f"mmlu:{FIX}/mmlu/test/astronomy_test.csv",
            f"bpb:{FIX}/text.jsonl",
            f"gen:{FIX}/gen.jsonl",
        ],
        progress=False,
    )["tasks"]
    for mine, lm in [("arc:arc", "lf_arc"), ("hellaswag:hellaswag", "lf_hellaswag")]:
        for metric in ("acc", "acc_norm"):
            assert ours[mine]["metrics"][metric] == pytest.approx(theirs[lm][f"{metric},none"]), (
                mine,
                metric,
            )
            assert ours[mine]["metrics"][f"{metric}_stderr"] == pytest.approx(
                theirs[lm][f"{metric}_stderr,none"]
            )
    assert ours["mmlu:astronomy_test"]["metrics"]["acc"] == pytest.approx(theirs["lf_mmlu"]["acc,none"])
    bpb = ours["bpb:text"]["metrics"]
    for metric in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert bpb[metric] == pytest.approx(theirs["lf_text"][f"{metric},none"], rel=1e-6), metric
    # generations: the same greedy strings, item by item
    gen_samples = sorted(out["samples"]["lf_gen"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in gen_samples][:3] == [
        s["output"] for s in ours["gen:gen"]["samples"]
    ]


def _run_with_site(site: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    prelude = "import site, sys; site.addsitedir(sys.argv.pop(1)); "
    cmd = [sys.executable, "-c", prelude + code, str(site), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_pth_hook_registers_lmforge_lazily(tmp_path):
    from lmforge.eval.lm_eval_hook import write_pth

    pth = write_pth(tmp_path)
    assert pth.read_text() == "import lmforge.eval.lm_eval_hook\n"
    code = (
        "assert 'lm_eval' not in sys.modules and 'torch' not in sys.modules; "
        "from lm_eval.api.registry import get_model, model_registry; "
        "print(get_model('lmforge').__name__, 'hf' in model_registry)"
    )
    proc = _run_with_site(tmp_path, code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["LmforgeLM", "True"]


@pytest.mark.slow
def test_lm_eval_command_line_runs_lmforge(setup, tmp_path):
    """`lm_eval --model lmforge ...` in a fresh interpreter whose site dir holds our .pth file."""
    from lmforge.eval.lm_eval_hook import write_pth

    ckpt, tasks_dir = setup
    write_pth(tmp_path)
    code = "from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; cli_evaluate()"
    args = ["--model", "lmforge", "--model_args", f"path={ckpt}", "--tasks", "lf_arc"]
    proc = _run_with_site(tmp_path, code, *args, "--include_path", str(tasks_dir), "--batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lf_arc" in proc.stdout and "acc" in proc.stdout
