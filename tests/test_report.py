"""The report card: every metrics series plotted, the summary block and stage costs, chat samples as
conversations, hostile files, the eval -> report stages, and a headless-Chromium screenshot."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.checkpoint.consolidated import save_model_checkpoint
from lmforge.model.config import ModelConfig, flops_per_token, num_params
from lmforge.model.transformer import Transformer
from lmforge.recipe import load_recipe
from lmforge.report import collect, summarize, write_report
from lmforge.report.plots import panel_png, panels
from lmforge.report.summary import git_commit, stage_costs
from lmforge.report.tables import summary_rows
from lmforge.run import run_recipe
from test_eval_helpers import small_tokenizer

REPO = Path(__file__).resolve().parents[1]
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
MODEL = dict(n_layer=1, d_model=32, n_head=2, max_seq_len=64)


def write_jsonl(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + tail)


def mark(run, stage, seconds, finished):
    (run / stage).mkdir(parents=True, exist_ok=True)
    (run / stage / "_complete.json").write_text(
        json.dumps({"hash": "x", "seconds": seconds, "finished": finished})
    )


def make_run(run):
    tok = small_tokenizer()
    tok.save(run / "tokenizer")
    (run / "data").mkdir(parents=True)
    (run / "data" / "stats.json").write_text(json.dumps(STATS))
    (run / "tokens").mkdir()
    (run / "tokens" / "meta.json").write_text(
        json.dumps({"train_tokens": 1000, "train_bytes": 3700, "val_tokens": 0})
    )
    rows = [
        {
            "step": s,
            "loss": 6.0 - s / 10,
            "lr": 1e-3 * min(1, s / 5),
            "grad_norm": 1.0 + s / 100,
            "tokens_per_s": 900 + s,
            "step_s": 0.5,
            "mfu": 1.5,
            "mem_gb": 0.25,
            "elapsed_s": s * 2.0,
        }
        for s in range(1, 21)
    ]
    rows[9]["val_loss"], rows[19]["val_loss"] = 5.2, 4.3
    rows[19]["val_bpb"] = 2.5
    write_jsonl(run / "pretrain" / "metrics.jsonl", rows, tail='{"step": 21, "lo')  # torn by a kill
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, **MODEL))
    save_model_checkpoint(
        model, tok, run / "pretrain" / "checkpoints" / "step_000020", stage="pretrain", step=20
    )
    return run, model, tok


DPO_ROWS = [
    {
        "step": s,
        "loss": 0.69 - s / 100,
        "lr": 1e-4,
        "grad_norm": 2.0,
        "tokens_per_s": 500.0,
        "step_s": 1.0,
        "mfu": 1.0,
        "mem_gb": 0.3,
        "rewards/chosen": s / 10,
        "rewards/rejected": -s / 10,
        "rewards/margins": s / 5,
        "rewards/accuracies": 0.5 + s / 100,
        "logps/chosen": -50.0,
        "logps/rejected": -60.0,
        "my_custom_series": 1.0,
        "skipped": "loss spike" if s == 3 else None,
    }
    for s in range(1, 61)  # long enough to be drawn raw + moving average
]


def test_summary_and_torn_metrics_line(tmp_path):
    run, _, _ = make_run(tmp_path / "run")
    data = collect(run)
    s = data["stages"]["pretrain"]["summary"]
    assert s["steps"] == 20 and s["final_val_loss"] == 4.3 and s["final_loss"] == 4.0
    assert s["tokens_per_s"] == 911  # median over steps 2..20
    assert s["tokens"] == round(sum((900 + i) * 0.5 for i in range(1, 21)))
    assert summarize([]) == {}


def test_one_plot_per_series_in_a_fixed_order():
    titles = [p.title for p in panels(DPO_ROWS)]
    assert titles == [
        "loss",
        "DPO implicit rewards",
        "DPO reward margin",
        "DPO reward accuracy (chosen > rejected)",
        "DPO log-probabilities",
        "my_custom_series",  # an unknown series still gets its plot, before the trainer's own
        "learning rate",
        "gradient norm (before clipping)",
        "throughput",
        "model FLOPs utilization",
        "peak memory",
    ]
    rewards = panels(DPO_ROWS)[1]
    assert [label for label, _, _ in rewards.series] == ["rewards/chosen", "rewards/rejected"]
    assert rewards.series[1][2][:2] == [-0.1, -0.2]
    rl = panels([{"step": 1, "loss": 0.1, "reward": 0.5, "kl": 0.01, "completion_length": 12.0}])
    assert [p.title for p in rl][:3] == ["loss", "RL reward (group mean)", "RL completion length"]
    png = panel_png(rewards, "dpo")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_summary_block_and_what_each_stage_cost(tmp_path, monkeypatch):
    run, model, tok = make_run(tmp_path / "run")
    for i, (stage, seconds) in enumerate(
        [("data", 3.0), ("tokenizer", 4.5), ("pretrain", 130.0), ("sft", 70.0)]
    ):
        mark(run, stage, seconds, finished=1000 + i)
    (run / "config.yaml").write_text("train:\n  seq_len: 32\nsft:\n  train:\n    seq_len: 999\n")
    sft_rows = [{"step": s, "loss": 3.0, "tokens_per_s": 100.0, "step_s": 2.0} for s in range(1, 6)]
    write_jsonl(run / "sft" / "metrics.jsonl", sft_rows)
    save_model_checkpoint(model, tok, run / "sft" / "checkpoints" / "step_000005", stage="sft", step=5)
    bpb = {"val_bpb": {"kind": "bpb", "n": 9, "metrics": {"bits_per_byte": 2.4}}}
    sft_bpb = {"val_bpb": {"kind": "bpb", "n": 9, "metrics": {"bits_per_byte": 2.7}}}
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(
        json.dumps({"checkpoints": [{"stage": "pretrain", "tasks": bpb}, {"stage": "sft", "tasks": sft_bpb}]})
    )
    report = collect(run)
    costs = {c["stage"]: c for c in stage_costs(report)}
    assert list(costs) == ["data", "tokenizer", "pretrain", "sft"]  # run order, from the markers
    cfg = ModelConfig(vocab_size=tok.vocab_size, **MODEL)
    pre_tokens = round(sum((900 + i) * 0.5 for i in range(1, 21)))
    assert costs["pretrain"]["tokens"] == pre_tokens
    assert costs["pretrain"]["flops"] == pytest.approx(pre_tokens * flops_per_token(cfg, 32))
    # sft asks for seq_len 999: the model's 64 positions are what it trained on
    assert costs["sft"]["flops"] == pytest.approx(1000 * flops_per_token(cfg, 64))
    assert costs["pretrain"]["val_bpb"] == 2.4 and costs["pretrain"]["bpb_source"] == "eval"
    assert costs["sft"]["bpb_change"] == pytest.approx(0.3) and costs["data"]["val_bpb"] is None
    assert costs["sft"]["seconds"] == 70.0 and costs["sft"]["steps"] == 5

    report.update(device="CPU: test", software="Python", commit="abc123")
    rows = dict(summary_rows(report))
    assert rows["parameters"].startswith(f"{num_params(cfg) / 1e3:.3g}k")
    assert rows["wall time"] == "3m 28s (data 3.0 s, tokenizer 4.5 s, pretrain 2m 10s, sft 1m 10s)"
    assert rows["tokens processed"].startswith(f"{(pre_tokens + 1000) / 1e3:.3g}k")
    assert rows["device"] == "CPU: test" and rows["git commit"] == "abc123"

    html = write_report(run)[0].read_text()
    md = (run / "report.md").read_text()
    for needle in ("parameters", "training FLOPs", "git commit", "what each stage cost", "+0.3000"):
        assert needle in html and needle in md, needle
    sft_flops = f"{1000 * flops_per_token(cfg, 64):.2e}"
    assert f"| sft | 2.7000 | +0.3000 | 1m 10s | 5 | 1k | {sft_flops} |" in md


def test_git_commit_at_report_time(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit(REPO).startswith(head.stdout.strip())
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit(REPO) == "unknown"


def test_chat_samples_render_as_conversations(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    samples = {
        "sft": [
            {
                "messages": [
                    {"role": "user", "content": "Who speaks <b>first</b>?"},
                    {"role": "assistant", "content": "ROMEO.\nThen JULIET."},
                ]
            }
        ],
        "pretrain": [{"prompt": "ROMEO:", "completion": " Alas<|end|> poor"}],
    }
    (run / "eval" / "samples.json").write_text(json.dumps(samples))
    html_path, md_path = write_report(run)
    html, md = html_path.read_text(), md_path.read_text()
    assert html.index("<h3>pretrain</h3>") < html.index("<h3>sft</h3>")  # training order
    assert (
        "<div class='turn user'><div class='bubble'><div class='role'>user</div>Who speaks &lt;b&gt;first"
        in html
    )
    assert "<div class='turn assistant'>" in html and "ROMEO.\nThen JULIET." in html
    assert "<|end|>" not in html and "&lt;|end|&gt;" not in html
    assert "Alas<span class='special'>end</span> poor" in html
    assert "**user:**\n\n> Who speaks <b>first</b>?" in md
    assert "**assistant:**\n\n> ROMEO.\n> Then JULIET." in md


def test_report_tolerates_an_empty_run_dir(tmp_path):
    html_path, md_path = write_report(tmp_path)
    assert "<h1>lmforge report" in html_path.read_text() and md_path.read_text().startswith(
        "# lmforge report"
    )


def test_report_survives_hostile_files(tmp_path):
    run, model, tok = make_run(tmp_path / "run")
    save_model_checkpoint(model, tok, run / "sft" / "checkpoints" / "step_000001", stage="sft", step=1)
    (run / "pretrain" / "checkpoints" / "step_000020" / "config.json").write_text("{not json")
    (run / "pretrain" / "metrics.jsonl").write_bytes(b'\xff\xfe[1, 2]\n"text"\n{"step": 1, "loss": "NaN?"}\n')
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text('{"checkpoints": [1, {"stage": "sft", "tasks": []}]}')
    (run / "eval" / "samples.json").write_text(
        '{"sft": [42, {"messages": "not a list"}, {"messages": [3]}], "dpo": 7}'
    )
    (run / "data" / "_complete.json").write_text('{"seconds": "soon"}')
    (run / "config.yaml").write_text("train: {seq_len: many}\nsft: [1]\n")
    (run / "sft" / "demo_eval.json").write_text('"just a string"')
    report = collect(run)
    assert report["stages"]["pretrain"]["model"] is None  # its config.json is unreadable
    assert report["stages"]["sft"]["model"]["seq_len"] == MODEL["max_seq_len"]  # the recipe's is not a number
    assert report["eval"] is None and report["samples"]["sft"] == [
        {"messages": "not a list"},
        {"messages": [3]},
    ]
    html = write_report(run)[0].read_text()
    assert "<h1>lmforge report: run</h1>" in html and "data:image/png" not in html


def test_run_eval_and_report_stages(tmp_path, capsys):
    run, model, tok = make_run(tmp_path / "run")
    save_model_checkpoint(model, tok, run / "sft" / "checkpoints" / "step_000004", stage="sft", step=4)
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
    user, reply = samples["sft"][0]["messages"]  # the post-trained checkpoint is asked in the chat template
    assert user == {"role": "user", "content": "ROMEO:"} and reply["role"] == "assistant"
    assert "<|end|>" not in reply["content"]
    html = (run / "report.html").read_text()
    md = (run / "report.md").read_text()
    for needle in (
        "gopher_short_doc 2",
        "Training: losses, throughput and MFU",
        "Evaluation: pretrain (step 20)",
        "Evaluation across stages",
        "plays_pref",
        "Sample generations",
        "ROMEO:",
    ):
        assert needle in html and needle in md, needle
    assert "<div class='turn assistant'>" in html
    # pretrain: loss (+ val loss), val bpb, lr, grad norm, tokens/s, MFU, memory: one inline PNG each
    assert html.count("data:image/png;base64,") == 7
    assert "alt='pretrain: validation bits per byte'" in html
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


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(chromium() is None, reason="no chromium (Debian: apt-get install -y chromium)")
def test_report_screenshot_in_headless_chromium(tmp_path):
    from PIL import Image

    run, _, _ = make_run(tmp_path / "run")
    write_jsonl(run / "dpo" / "metrics.jsonl", DPO_ROWS)
    html_path, _ = write_report(run)
    png = tmp_path / "report.png"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "render_report.sh"), str(html_path), str(png), "1280,2400"],
        check=True,
        timeout=120,
    )
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape == (2400, 1280, 3)
    inked = float((image.sum(axis=2) < 3 * 235).mean())
    assert inked > 0.03, f"page nearly blank ({inked:.1%} of pixels drawn)"
    curve_blue = int((np.abs(image - [31, 119, 180]).max(axis=2) < 40).sum())  # matplotlib's first color
    assert curve_blue > 2000, "no plotted curves visible: the inline PNGs did not render"
