"""The `eval` stage of `lmforge run`: every trained stage's latest checkpoint on the recipe's tasks.

Writes RUN_DIR/eval/results.json (one entry per checkpoint, pretrain < sft < dpo < rl) and
RUN_DIR/eval/samples.json (a few seeded generations per checkpoint, for the report card):
base checkpoints continue each prompt as text, post-trained ones answer it as a user's chat turn.
Chat-only tasks (plays_answer) run on the post-trained stages only; the final stage's answer format
and accuracy (and the shape of its other replies) are printed last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write_json

CHECKPOINT_STAGES = ("pretrain", "sft", "dpo", "rl")
CHAT_STAGES = ("sft", "dpo", "rl")  # their checkpoints speak the chat template
CHAT_ONLY_TASKS = ("plays_answer",)  # generated chat replies: meaningless for a base model


def trained_stages(run_dir: Path, only: list[str] | None = None) -> list[tuple[str, Path]]:
    """(stage, latest checkpoint) for each stage of the run that has checkpoints."""
    from lmforge.checkpoint.consolidated import list_checkpoints

    out = []
    for stage in CHECKPOINT_STAGES:
        if only and stage not in only:
            continue
        found = list_checkpoints(run_dir / stage / "checkpoints")
        if found:
            out.append((stage, found[-1][1]))
    return out


def sample_generations(
    model, tok, prompts: list[str], max_tokens: int, temperature: float, seed: int, chat: bool = False
) -> list[dict]:
    """[{"prompt", "completion"}] or, with `chat`, [{"messages": [user, assistant]}] per prompt."""
    from lmforge.inference import Engine, SamplingParams

    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_k=50, seed=seed)
    engine = Engine(model, tok)
    if chat:
        turns = [[{"role": "user", "content": p}] for p in prompts]
        replies = [engine.chat(t, params).text for t in turns]
        return [{"messages": [*t, {"role": "assistant", "content": r}]} for t, r in zip(turns, replies)]
    outs = engine.generate(list(prompts), params)
    return [{"prompt": p, "completion": o.text} for p, o in zip(prompts, outs)]


def eval_stage(recipe: Any, run_dir: Path) -> dict:
    from lmforge.checkpoint.consolidated import load_model
    from lmforge.eval.api import evaluate_checkpoint, format_table

    cfg = recipe.eval
    stages = trained_stages(run_dir, cfg.stages or None)
    if not stages:
        raise LmforgeError(f"{run_dir}: no checkpoints to evaluate (run pretrain first)")
    results: dict[str, Any] = {"checkpoints": []}
    samples: dict[str, Any] = {}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for stage, ckpt in stages:
        model, tok = load_model(ckpt, device=device)
        tasks = [t for t in cfg.tasks if stage in CHAT_STAGES or t not in CHAT_ONLY_TASKS]
        if not tasks:  # e.g. `--eval.tasks '[plays_answer]'`: nothing of it applies to the base model
            continue
        entry = evaluate_checkpoint(
            ckpt,
            tasks,
            shots=cfg.shots,
            limit=cfg.limit,
            seed=cfg.fewshot_seed,
            batch_size=cfg.batch_size,
            max_gen_toks=cfg.max_gen_toks,
            bpb_max_tokens=cfg.bpb_max_tokens,
            plays_seed=recipe.seed,
            model_and_tokenizer=(model, tok),
        )
        results["checkpoints"].append(entry)
        print(format_table(entry), flush=True)
        if cfg.sample_prompts:
            samples[stage] = sample_generations(
                model,
                tok,
                cfg.sample_prompts,
                cfg.sample_tokens,
                cfg.sample_temperature,
                recipe.seed,
                chat=stage in CHAT_STAGES,
            )
        atomic_write_json(run_dir / "eval" / "results.json", results)
    atomic_write_json(run_dir / "eval" / "samples.json", samples)
    print_answer_summary(results)
    return results


def print_answer_summary(results: dict) -> None:
    """One line for the final stage's chatbot: how often its replies are a listed title (and any
    play title), and right."""
    final = results["checkpoints"][-1]
    answer = final["tasks"].get("plays_answer")
    if answer is None:
        return
    m = answer["metrics"]
    titled = f" (with a play title, listed or not, {100 * m['title']:.0f}%)" if "title" in m else ""
    print(
        f"[lmforge] eval: the {final.get('stage')} chatbot at temperature 0 answers {answer['n']} held-out "
        f"which-play questions with a listed title {100 * m['format']:.0f}% of the time{titled}, the right "
        f"one {100 * m['acc']:.0f}% (chance 25%)",
        flush=True,
    )
    if "who_speaks_format" in m:
        print(
            f"[lmforge] eval: and gives a character's name to {100 * m.get('who_speaks_name', 0):.0f}% of "
            f"the who-speaks questions (one of that play's {100 * m['who_speaks_format']:.0f}%, the right "
            f"one {100 * m['who_speaks_acc']:.0f}%), verse to "
            f"{100 * m.get('continue_format', 0):.0f}% of the continue-this-speech turns and to "
            f"{100 * m.get('out_of_domain_format', 0):.0f}% of the everyday questions",
            flush=True,
        )
