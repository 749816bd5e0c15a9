"""The `eval` recipe section."""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_tasks() -> list[str]:
    return ["val_bpb", "plays", "plays_chat", "plays_pref", "plays_answer"]


def _default_prompts() -> list[str]:
    return ["ROMEO:", "To be, or not to be", "KING HENRY:\nOnce more unto the breach"]


@dataclass
class EvalConfig:
    """What the eval stage measures on the latest checkpoint of every trained stage.

    Task specs (lmforge.eval.tasks): built-ins plays, plays_chat, plays_pref, plays_answer, val_bpb
    (the run's val token shard) or KIND:PATH with KIND mmlu|hellaswag|arc|mc|gen|bpb.
    """

    tasks: list[str] = field(
        default_factory=_default_tasks, metadata={"help": "task specs (see lmforge eval --help)"}
    )
    limit: int = field(default=0, metadata={"help": "first N items of each task (0: all)"})
    shots: int = field(default=0, metadata={"help": "few-shot examples per item"})
    fewshot_seed: int = field(
        default=1234, metadata={"help": "few-shot draws: Random(fewshot_seed + item index)"}
    )
    batch_size: int = 16  # sequences scored per forward pass
    max_gen_toks: int = 32  # longest generation of a generation task, in tokens
    bpb_max_tokens: int = field(
        default=65536, metadata={"help": "cap on val-shard tokens scored for bits per byte"}
    )
    stages: list[str] = field(
        default_factory=list, metadata={"help": "stages to evaluate (empty: all with checkpoints)"}
    )
    sample_prompts: list[str] = field(
        default_factory=_default_prompts, metadata={"help": "prompts for sample generations"}
    )
    sample_tokens: int = 64  # tokens per sample generation in samples.json
    sample_temperature: float = 0.8  # sampling temperature of the samples
