"""The report card and the eval -> report stages on a small run directory."""

import json

import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.recipe import load_recipe
from lmforge.report import collect, summarize, write_report
from lmforge.run import run_recipe
from test_eval_helpers import small_tokenizer

STATS = {
    "input": {"documents": 10, "characters": 5000},
    "output": {"documents": 7, "characters": 4000},
    "steps": {
        "gopher_quality": {
            "in_docs": 10,
            "out_docs": 8,
            "in_chars": 5000,
            "out_chars": 4300,
            "modified": 0,
            "dropped": {"gopher_short_doc": 2},
        },
        "exact_dedup": {
            "in_docs": 8,
            "out_docs": 7,
            "in_chars": 4300,
            "out_chars": 4000,
            "modified": 0,
            "dropped": {"duplicate": 1},
        },
    },
    "steps_order": ["gopher_quality", "exact_dedup"],
}


def make_run(run):
    tok = small_tokenizer()
    tok.save(run / "tokenizer")
    (run / "data").mkdir(parents=True)
    (run / "data" / "stats.json").write_text(json.dumps(STATS))
    (run / "tokens").mkdir()
    (run / "tokens" / "meta.json").write_text(
        json.dumps({"train_tokens": 1000, "train_bytes": 3700, "val_tokens": 0})
    )
    (run / "pretrain").mkdir()
    rows = [
        {
            "step": s,
            "loss": 6.0 - s / 10,
            "lr": 1e-3 * min(1, s / 5),
            "tokens_per_s": 900 + s,
            "mfu": 1.5,
            "elapsed_s": s * 2.0,
        }
        for s in range(1, 21)
    ]
    rows[9]["val_loss"], rows[19]["val_loss"] = 5.2, 4.3
    (run / "pretrain" / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + '\n{"step": 21, "lo'
    )
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=64)
    )
    save_model_checkpoint(
        model, tok, run / "pretrain" / "checkpoints" / "step_000020", stage="pretrain", step=20
    )
    return run


def test_summary_and_torn_metrics_line(tmp_path):
    run = make_run(tmp_path / "run")
    data = collect(run)
    s = data["stages"]["pretrain"]["summary"]
    assert s["steps"] == 20 and s["final_val_loss"] == 4.3 and s["final_loss"] == 4.0
    assert s["tokens_per_s"] == 911  # median over steps 2..20
    assert summarize([]) == {}


def test_report_tolerates_an_empty_run_dir(tmp_path):
    html_path, md_path = write_report(tmp_path)
    assert "<h1>lmforge report" in html_path.read_text() and md_path.read_text().startswith(
        "# lmforge report"
    )


def test_run_eval_and_report_stages(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    recipe = load_recipe(
        None,
        {
            "run_dir": str(run),
            "stages": ["eval", "report"],
            "eval.tasks": ["plays", "plays_pref"],
            "eval.limit": 4,
            "eval.sample_prompts": ["ROMEO:"],
            "eval.sample_tokens": 8,
        },
    )
    run_recipe(recipe)
    results = json.loads((run / "eval" / "results.json").read_text())
    entry = results["checkpoints"][0]
    assert entry["stage"] == "pretrain" and entry["tasks"]["plays"]["n"] == 4
    samples = json.loads((run / "eval" / "samples.json").read_text())
    assert samples["pretrain"][0]["prompt"] == "ROMEO:"
    html = (run / "report.html").read_text()
    md = (run / "report.md").read_text()
    for needle in (
        "gopher_short_doc 2",
        "Training: throughput and MFU",
        "Evaluation: pretrain (step 20)",
        "plays_pref",
        "Sample generations",
        "ROMEO:",
    ):
        assert needle in html and needle in md, needle
    assert html.count("data:image/png;base64,") == 1  # the pretrain curves, inline
    assert "src='http" not in html and "<script" not in html  # self-contained


def test_stages_side_by_side_and_demo_table(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "sft").mkdir()
    entry = {"tasks": {"plays": {"n": 10, "chance": 0.25, "metrics": {"acc": 0.3, "acc_stderr": 0.1}}}}
    results = {
        "checkpoints": [{**entry, "stage": "pretrain", "step": 5}, {**entry, "stage": "sft", "step": 9}]
    }
    results["checkpoints"][1] = json.loads(json.dumps(results["checkpoints"][1]))
    results["checkpoints"][1]["tasks"]["plays"]["metrics"]["acc"] = 0.5
    (run / "eval" / "results.json").write_text(json.dumps(results))
    (run / "sft" / "demo_eval.json").write_text(
        json.dumps({"before": {"which_play_acc": 0.25}, "after": {"which_play_acc": 0.4}})
    )
    _, md_path = write_report(run)
    md = md_path.read_text()
    assert "## Evaluation across stages" in md
    assert "| plays | acc | 0.3000 | 0.5000 |" in md
    assert "| sft | which_play_acc | 0.2500 | 0.4000 |" in md
