"""The model card (README.md) of an exported checkpoint: what the model is and how it was made.

Every figure comes from a file: the checkpoint's config.json (architecture, stage, step) and, when
the checkpoint sits in a run directory (RUN_DIR/<stage>/checkpoints/step_N), the run's data
statistics, tokenizer, token shards, training metrics (tokens trained up to this step) and eval
results for this checkpoint. What is missing is left out; nothing is estimated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.report.reading import TRAIN_STAGES, read_json, read_metrics, stage_rank
from lmforge.report.summary import processed_tokens

HF_CLASS = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}


def run_dir_of(ckpt: Path) -> Path | None:
    """RUN_DIR for RUN_DIR/<stage>/checkpoints/step_N, else None (an imported or copied checkpoint)."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name in TRAIN_STAGES:
        return ckpt.parents[2]
    return None


def model_card(ckpt: Path, model, tokenizer, name: str) -> str:
    """The card's Markdown for `model` (loaded from `ckpt`) as exported under `name`."""
    info = read_json(Path(ckpt) / "config.json")
    stage, step = (info.get("stage"), info.get("step")) if isinstance(info, dict) else (None, None)
    run_dir = run_dir_of(ckpt)
    sections = [_front_matter(model.cfg.arch), f"# {name}\n", _overview(model, stage, step, run_dir)]
    sections.append(_architecture(model))
    if run_dir is not None:
        sections += [_training(run_dir, stage, step), _data(run_dir), _evaluation(run_dir, stage, step)]
    sections.append(_tokenizer(tokenizer))
    sections.append(_usage(tokenizer, stage))
    return "\n".join(s for s in sections if s)


def _front_matter(arch: str) -> str:
    return f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [lmforge, {arch}]\n---\n"


def _overview(model, stage: str | None, step: int | None, run_dir: Path | None) -> str:
    what = f"A {_count(model.num_params())}-parameter decoder-only transformer trained with lmforge"
    if run_dir is not None:
        what += f" (run `{run_dir.name}`)"
    if stage is not None:
        what += f"; this is the `{stage}` checkpoint at step {step}"
    return what + ".\n"


def _architecture(model) -> str:
    cfg = model.cfg
    rows = [
        ("class", f"`{HF_CLASS.get(cfg.arch, cfg.arch)}` (lmforge arch `{cfg.arch}`)"),
        ("parameters", f"{model.num_params():,}"),
        ("layers", cfg.n_layer),
        ("width (d_model)", cfg.d_model),
        ("attention heads / KV heads", f"{cfg.n_head} / {cfg.n_kv_head}"),
        ("head dim", cfg.head_dim),
        ("MLP width", cfg.d_ff),
        ("context length", cfg.max_seq_len),
        ("vocabulary", cfg.vocab_size),
        ("tied embeddings", "yes" if cfg.tie_embeddings else "no"),
    ]
    if cfg.arch == "llama":
        rows.append(("RoPE theta", f"{cfg.rope_theta:g}"))
    return "## Architecture\n\n" + _table(("", ""), rows)


def _training(run_dir: Path, stage: str | None, step: int | None) -> str:
    """Steps and tokens of each training stage up to this checkpoint's, from their metrics.jsonl."""
    rows = []
    for s in TRAIN_STAGES:
        if stage is not None and stage_rank(s) > stage_rank(stage):
            break
        last = step if s == stage and isinstance(step, int) else None
        records = _records(run_dir / s / "metrics.jsonl", last)
        train = [m for m in records if _is_number(m.get("loss"))]
        if not train:
            continue
        timed = [m for m in train if _is_number(m.get("tokens_per_s")) and _is_number(m.get("step_s"))]
        tokens = processed_tokens(timed)
        val = [m for m in records if _is_number(m.get("val_loss"))]
        last_val = val[-1] if val else {}
        rows.append((
            f"`{s}`",
            max(m["step"] for m in train),
            f"{tokens:,}" if tokens is not None else "-",
            _num(train[-1]["loss"]),
            _num(last_val.get("val_loss")),
            _num(last_val.get("val_bpb")),
        ))
    if not rows:
        return ""
    head = ("stage", "steps", "tokens trained", "last train loss", "val loss", "val bits/byte")
    note = "\nTokens trained are summed from each logged step (tokens/s × step seconds, all ranks).\n"
    return "## Training\n\n" + _table(head, rows) + note


def _records(path: Path, last_step: int | None) -> list[dict]:
    """metrics.jsonl records with an integer step (up to `last_step` when given)."""
    rows = [m for m in read_metrics(path) if _count_of(m, "step") is not None]
    return [m for m in rows if last_step is None or m["step"] <= last_step]


def _data(run_dir: Path) -> str:
    stats, meta = read_json(run_dir / "data" / "stats.json"), read_json(run_dir / "tokens" / "meta.json")
    lines = []
    if isinstance(stats, dict):
        given, kept = stats.get("input"), stats.get("output")
        count = _count_of(given, "documents"), _count_of(kept, "documents")
        if None not in count:
            chars = _count_of(kept, "characters")
            lines.append(f"- documents: {count[0]:,} read, {count[1]:,} kept"
                         + (f" ({chars:,} characters)" if chars is not None else ""))
        order = stats.get("steps_order")
        if isinstance(order, list) and order and all(isinstance(s, str) for s in order):
            lines.append("- pipeline steps: " + ", ".join(f"`{s}`" for s in order))
    for key, label in (("train_tokens", "training tokens"), ("val_tokens", "held-out tokens")):
        tokens = _count_of(meta, key)
        if tokens is not None:
            lines.append(f"- {label} in the shards: {tokens:,}")
    return "## Data\n\n" + "\n".join(lines) + "\n" if lines else ""


def _count_of(section: Any, key: str) -> int | None:
    value = section.get(key) if isinstance(section, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _evaluation(run_dir: Path, stage: str | None, step: int | None) -> str:
    """The eval results recorded for this checkpoint (same stage and step) in RUN_DIR/eval/results.json."""
    from lmforge.eval.api import result_rows

    results = read_json(run_dir / "eval" / "results.json")
    entries = results.get("checkpoints") if isinstance(results, dict) else None
    mine = [
        e for e in entries if isinstance(e, dict) and (e.get("stage"), e.get("step")) == (stage, step)
    ] if isinstance(entries, list) else []
    tasks = mine[-1].get("tasks") if mine else None
    if not isinstance(tasks, dict):
        return ""
    readable = {  # the shape result_rows reads; anything else in a hand-edited file is left out
        name: res
        for name, res in tasks.items()
        if isinstance(res, dict) and isinstance(res.get("metrics"), dict)
    }
    rows = [
        (task, metric, n, _num(value), _num(se), _num(chance, 2))
        for task, metric, n, value, se, chance in result_rows({"tasks": readable})
    ]
    if not rows:
        return ""
    return "## Evaluation\n\n" + _table(("task", "metric", "n", "value", "± stderr", "chance"), rows)


def _tokenizer(tokenizer) -> str:
    if tokenizer is None:
        return ""
    specials = " ".join(f"`{s}`" for s in tokenizer.special_ids)
    if not hasattr(tokenizer, "merges"):  # a model's own tokenizer.json, kept as imported
        return (
            "## Tokenizer\n\n"
            f"The imported model's own tokenizer.json, {tokenizer.vocab_size:,} ids (specials {specials}), "
            f"chat template from {tokenizer.chat_template_source}.\n"
        )
    return (
        "## Tokenizer\n\n"
        f"Byte-level BPE, {tokenizer.vocab_size:,} ids (256 bytes, {len(tokenizer.merges):,} merges, "
        f"specials {specials}), split pattern `{tokenizer.pattern_name or 'custom'}`.\n"
    )


def _usage(tokenizer, stage: str | None) -> str:
    chat = (
        stage not in (None, "pretrain") and tokenizer is not None and "<|assistant|>" in tokenizer.special_ids
    )
    lines = [
        "## Use\n",
        "```python",
        "from transformers import pipeline",
        'pipe = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")',
    ]
    if chat:
        lines.append('print(pipe([{"role": "user", "content": "Who is Hamlet?"}], max_new_tokens=64))')
    else:
        lines.append('print(pipe("ROMEO:", max_new_tokens=64)[0]["generated_text"])')
    lines += [
        "```",
        "",
        "The tokenizer puts `<|eos|>` before a text prompt (a document starts there in training) and "
        "generation stops at `<|eos|>` or `<|end|>`, so greedy decoding gives `lmforge generate "
        "--temperature 0`'s tokens.",
    ]
    return "\n".join(lines) + "\n"


def _table(head: tuple, rows: list[tuple]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "-"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
