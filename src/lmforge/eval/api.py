"""Evaluate a checkpoint on a list of task specs; results files, tables and side-by-side comparison.

results.json = {"checkpoints": [{"checkpoint", "stage", "step", "tasks": {name: result}}, ...]}
(one entry per evaluated checkpoint: `lmforge eval` writes one, the eval stage one per stage).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval.runner import evaluate_task
from lmforge.eval.tasks import load_task
from lmforge.fileio import read_json

TABLE_METRICS = ("format", "title", "acc", "acc_norm", "exact_match", "bits_per_byte", "word_perplexity")


def run_config(ckpt: Path) -> dict:
    """The recipe of the run a checkpoint belongs to (run_dir/config.yaml), or {}."""
    import yaml

    for parent in [ckpt, *ckpt.parents][:5]:
        cfg = parent / "config.yaml"
        if cfg.is_file():
            try:
                return yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                return {}
    return {}


def plays_kwargs(tokenizer, ckpt: Path | None = None, seed: int | None = None) -> dict:
    """The demo builder's seed and settings: the run's own, so held-out scenes stay held out."""
    from lmforge.config import from_dict
    from lmforge.tasks.config import DemoConfig

    cfg = run_config(ckpt) if ckpt else {}
    demo = (cfg.get("sft") or {}).get("demo") or {}
    return {
        "tokenizer": tokenizer,
        "seed": seed if seed is not None else int(cfg.get("seed", 1337)),
        "demo_cfg": from_dict(DemoConfig, demo, where="sft.demo", source="config.yaml"),
    }


def evaluate_checkpoint(
    model_path: str | Path,
    tasks: list[str],
    *,
    shots: int = 0,
    limit: int = 0,
    seed: int = 1234,
    batch_size: int = 16,
    max_gen_toks: int = 32,
    bpb_max_tokens: int = 65536,
    device: str = "cpu",
    plays_seed: int | None = None,
    model_and_tokenizer: tuple | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the checkpoint (or use `model_and_tokenizer`) and run every task on it."""
    from lmforge.checkpoint.consolidated import read_checkpoint_config, resolve_checkpoint

    ckpt = resolve_checkpoint(model_path)
    if model_and_tokenizer is None:
        from lmforge.checkpoint.consolidated import load_model

        model_and_tokenizer = load_model(ckpt, device=device)
    model, tok = model_and_tokenizer
    info = read_checkpoint_config(ckpt)
    if not tasks:
        raise LmforgeError("no tasks given (e.g. --tasks plays,bpb:data.txt)")
    kwargs = plays_kwargs(tok, ckpt, plays_seed)
    out: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "stage": info.get("stage"),
        "step": info.get("step"),
        "params": model.num_params(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tasks": {},
    }
    from tqdm.auto import tqdm

    for spec in tqdm(tasks, desc=f"eval {ckpt.name}", unit="task", disable=not progress):
        if spec == "val_bpb":
            tokens = next(
                (d / "tokens" for d in ckpt.parents if (d / "tokens" / "meta.json").is_file()), None
            )
            if tokens is None:
                print(f"[lmforge eval] val_bpb: no tokens/ directory above {ckpt}; skipped", flush=True)
                continue
            task = load_task(f"bpb:{tokens}", **kwargs)
            task.name = "val_bpb"
        else:
            task = load_task(spec, **kwargs)
        if progress:
            print(f"[lmforge eval] {task.name} ({task.kind}) on {ckpt.name} ...", flush=True)
        name, k = task.name, 2
        while name in out["tasks"]:  # the same file name twice (text.txt, text.jsonl)
            name, k = f"{task.name}#{k}", k + 1
        out["tasks"][name] = evaluate_task(
            model,
            tok,
            task,
            shots=shots,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            max_gen_toks=max_gen_toks,
            bpb_max_tokens=bpb_max_tokens,
        )
    return out


def load_results(path: str | Path) -> dict:
    """A results.json, or a run directory (its eval/results.json)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval" / "results.json"
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise LmforgeError(f'{p}: not an lmforge results file (expected {{"checkpoints": [...]}})')
    return data


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def result_rows(entry: dict) -> list[tuple[str, str, int, float, float | None, float | None]]:
    """(task, metric, n, value, stderr, chance) for the metrics worth a table row."""
    rows = []
    for name, res in entry.get("tasks", {}).items():
        m = res.get("metrics", {})
        for key in TABLE_METRICS:
            if key in m:
                chance = res.get("chance") if key.startswith(("acc", "exact")) else None
                rows.append((name, key, res.get("n", 0), m[key], m.get(f"{key}_stderr"), chance))
    return rows


def format_table(entry: dict) -> str:
    head = f"{entry.get('stage') or 'checkpoint'} step {entry.get('step')}  ({entry.get('checkpoint')})"
    lines = [head, f"{'task':<24} {'metric':<16} {'n':>6} {'value':>9} {'± stderr':>9} {'chance':>7}"]
    for name, key, n, value, se, chance in result_rows(entry):
        lines.append(f"{name:<24} {key:<16} {n:>6} {_fmt(value):>9} {_fmt(se):>9} {_fmt(chance, 2):>7}")
    return "\n".join(lines)


def compare_table(a: dict, b: dict, label_a: str, label_b: str) -> str:
    """Every (stage, task, metric) of two results files side by side, with the difference."""

    def index(data: dict) -> dict:
        out = {}
        for entry in data["checkpoints"]:
            for name, key, _n, value, se, _ in result_rows(entry):
                out[(entry.get("stage") or "-", name, key)] = (value, se)
        return out

    ia, ib = index(a), index(b)
    keys = list(dict.fromkeys(list(ia) + list(ib)))
    w = max(10, len(label_a), len(label_b))
    lines = [f"{'stage':<10} {'task':<24} {'metric':<16} {label_a:>{w}} {label_b:>{w}} {'diff':>9}"]
    for k in keys:
        va, vb = ia.get(k, (None, None))[0], ib.get(k, (None, None))[0]
        diff = _fmt(vb - va) if va is not None and vb is not None else "-"
        lines.append(f"{k[0]:<10} {k[1]:<24} {k[2]:<16} {_fmt(va):>{w}} {_fmt(vb):>{w}} {diff:>9}")
    return "\n".join(lines)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
