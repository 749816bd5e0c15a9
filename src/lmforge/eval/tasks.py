"""Evaluation tasks read from local files in the layouts people already have, and the plays' tasks.

A task spec is `KIND:PATH` (or just PATH, the kind guessed from the file) or a built-in name:

  mmlu:DIR_OR_CSV   MMLU CSV rows `question,A,B,C,D,answer` (no header, as in the original
                    data/test/<subject>_test.csv); few-shot examples from a sibling
                    dev/<subject>_dev.csv when present (lm-eval: first_n), else from the file
  hellaswag:JSONL   HellaSwag rows {ctx_a, ctx_b, activity_label, endings, label}, lm-eval's preprocess
  arc:JSONL         ARC rows {question, choices: {text, label}, answerKey} (Hugging Face layout) or
                    {question: {stem, choices: [{text, label}]}, answerKey} (AI2's original JSONL)
  mc:JSONL          generic {question, choices, answer} (answer: index, letter or the choice text);
                    an optional "prompt" field is used verbatim instead of "Question: ...\\nAnswer:"
  gen:JSONL         generation {question | prompt, answer (string or list)}: greedy until "\\n",
                    exact match after normalisation
  bpb:PATH          bits per byte / perplexity of a text file (.txt: one document; .jsonl: the
                    "text" field of each line) or a token shard directory (tokens/ with meta.json)
  plays             the demo's 4-choice "which play is this passage from" questions (chance 25%),
                    held out by scene, as plain text for a base model
  plays_chat        the same questions in the chat template, answered as the assistant (the SFT format)
  plays_answer      the same questions answered by greedy generation in the chat template, as
                    `lmforge chat` answers at temperature 0: format (the reply is one of the listed
                    titles) and acc (it is the right one); besides, 20 held-out who-speaks and 20
                    continue-speech turns and 10 everyday questions (not limited by --limit):
                    who_speaks_name / who_speaks_format / who_speaks_acc (a speaker name of any
                    play / of the play asked about / the right one),
                    continue_format and out_of_domain_format (the first line has 3+ words: verse)
  val_bpb           bits per byte on the val token shard of the checkpoint's run (RUN/tokens)
  plays_pref        the demo's held-out preference pairs (the recipe's sft.demo.preference_mix of
                    which-play, echo and loop pairs): is the chosen completion more likely than the
                    rejected one (chance 50%), in the chat template

Prompts follow lm-eval's task templates (target delimiter " ", few-shot delimiter "\\n\\n").
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.data.documents import iter_jsonl
from lmforge.errors import LmforgeError

LETTERS = "ABCDEFGHIJ"
KINDS = ("mmlu", "hellaswag", "arc", "mc", "gen", "bpb")
BUILTIN = ("plays", "plays_chat", "plays_pref", "plays_answer")  # and val_bpb: resolved by lmforge.eval.api


@dataclass
class MCDoc:
    query: str
    choices: list[str]
    gold: int


@dataclass
class GenDoc:
    query: str
    answers: list[str]


@dataclass
class TokenMCDoc:
    """A multiple-choice item already tokenized (chat-rendered prompt + reply tokens per choice)."""

    context: list[int]
    choices: list[list[int]]
    choice_texts: list[str]
    gold: int


@dataclass
class Task:
    name: str
    kind: str  # "mc" | "gen" | "bpb" | "token_mc" | "chat_answer"
    docs: list = field(default_factory=list)
    fewshot_pool: list | None = None  # None: other docs of the same task
    fewshot_first_n: bool = False  # lm-eval's first_n sampler (MMLU dev)
    description: str = ""
    chance: float | None = None
    until: list[str] = field(default_factory=lambda: ["\n"])
    source: str = ""  # bpb: the file or shard directory
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    checks: list = field(default_factory=list)  # chat_answer: other chat turns whose reply shape is checked
    titles: list[str] = field(default_factory=list)  # chat_answer: every play title (the title metric)


# ---------------------------------------------------------------------------- helpers


def read_jsonl_items(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of every line of a JSONL file; a file with none is an error."""
    rows = list(iter_jsonl(path))
    if not rows:
        raise LmforgeError(f"{path}: no items")
    return rows


def need_field(obj: dict, key: str, where: str, kind: type | tuple = object) -> Any:
    """obj[key], or an error naming `where` when it is missing or not of `kind`."""
    if key not in obj:
        raise LmforgeError(f"{where}: missing key {key!r} (have {sorted(obj)})")
    if not isinstance(obj[key], kind):
        raise LmforgeError(
            f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {obj[key]!r:.60}"
        )
    return obj[key]


def _answer_index(answer: Any, choices: list[str], labels: list[str], where: str) -> int:
    if isinstance(answer, bool):
        raise LmforgeError(f"{where}: answer must be an index, a letter or a choice, got {answer!r}")
    if isinstance(answer, int):
        idx = answer
    elif isinstance(answer, str) and answer in labels:
        idx = labels.index(answer)
    elif isinstance(answer, str) and answer in choices:
        idx = choices.index(answer)
    elif isinstance(answer, str) and answer.strip().isdigit():
        idx = int(answer)
    else:
        raise LmforgeError(
            f"{where}: answer {answer!r} is not an index, a label ({', '.join(labels)}) or a choice"
        )
    if not 0 <= idx < len(choices):
        raise LmforgeError(f"{where}: answer index {idx} out of range for {len(choices)} choices")
    return idx


# ---------------------------------------------------------------------------- loaders


def mmlu_query(question: str, choices: list[str]) -> str:
    lines = [question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def read_mmlu_csv(path: Path) -> list[MCDoc]:
    if not path.is_file():
        raise LmforgeError(f"{path}: file not found")
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or (lineno == 1 and [c.strip().lower() for c in row[:2]] == ["question", "a"]):
                continue
            if len(row) != 6:
                raise LmforgeError(
                    f"{path}:{lineno}: expected 6 columns (question,A,B,C,D,answer), got {len(row)}"
                )
            question, *choices, answer = row
            ans = answer.strip().upper()
            if ans not in LETTERS[:4]:
                raise LmforgeError(f"{path}:{lineno}: answer must be A, B, C or D, got {answer!r}")
            docs.append(MCDoc(mmlu_query(question, choices), list(LETTERS[:4]), LETTERS.index(ans)))
    if not docs:
        raise LmforgeError(f"{path}: no questions")
    return docs


def mmlu_subject(path: Path) -> str:
    return re.sub(r"_(test|dev|val)$", "", path.stem).replace("_", " ")


def load_mmlu(name: str, path: Path) -> Task:
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise LmforgeError(f"{path}: no MMLU .csv files")
    if len(files) > 1:
        raise LmforgeError(f"{path}: {len(files)} CSV files; name one subject file (mmlu:{files[0]})")
    file = files[0]
    subject = mmlu_subject(file)
    dev = file.parent.parent / "dev" / f"{subject.replace(' ', '_')}_dev.csv"
    task = Task(
        name,
        "mc",
        read_mmlu_csv(file),
        description=f"The following are multiple choice questions (with answers) about {subject}.\n\n",
        chance=0.25,
    )
    if dev.is_file() and dev != file:
        task.fewshot_pool, task.fewshot_first_n = read_mmlu_csv(dev), True
    return task


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess` (WikiHow bracket artifacts, double spaces)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(name: str, path: Path) -> Task:
    docs = []
    for lineno, obj in read_jsonl_items(path):
        where = f"{path}:{lineno}"
        endings = need_field(obj, "endings", where, list)
        ctx = need_field(obj, "ctx_a", where, str) + " " + need_field(obj, "ctx_b", where, str).capitalize()
        query = hellaswag_preprocess(need_field(obj, "activity_label", where, str) + ": " + ctx)
        choices = [hellaswag_preprocess(e) for e in endings]
        docs.append(
            MCDoc(
                query, choices, _answer_index(need_field(obj, "label", where, (int, str)), choices, [], where)
            )
        )
    return Task(name, "mc", docs, chance=0.25)


def load_arc(name: str, path: Path) -> Task:
    docs = []
    for lineno, obj in read_jsonl_items(path):
        where = f"{path}:{lineno}"
        q = need_field(obj, "question", where, (str, dict))
        if isinstance(q, dict):  # AI2's original layout
            stem = need_field(q, "stem", where, str)
            items = need_field(q, "choices", where, list)
            texts, labels = [c["text"] for c in items], [c["label"] for c in items]
        else:
            stem = q
            ch = need_field(obj, "choices", where, dict)
            texts, labels = (
                list(need_field(ch, "text", where, list)),
                list(need_field(ch, "label", where, list)),
            )
        key = need_field(obj, "answerKey", where, str)
        if key not in labels:
            raise LmforgeError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
        docs.append(MCDoc(f"Question: {stem}\nAnswer:", texts, labels.index(key)))
    return Task(name, "mc", docs, chance=None)


def load_generic_mc(name: str, path: Path) -> Task:
    docs, n_choices = [], set()
    for lineno, obj in read_jsonl_items(path):
        where = f"{path}:{lineno}"
        choices = [str(c) for c in need_field(obj, "choices", where, list)]
        if len(choices) < 2:
            raise LmforgeError(f"{where}: need at least 2 choices, got {len(choices)}")
        gold = _answer_index(need_field(obj, "answer", where), choices, list(LETTERS[: len(choices)]), where)
        query = (
            obj["prompt"]
            if isinstance(obj.get("prompt"), str)
            else f"Question: {need_field(obj, 'question', where, str)}\nAnswer:"
        )
        docs.append(MCDoc(query, choices, gold))
        n_choices.add(len(choices))
    chance = 1.0 / n_choices.pop() if len(n_choices) == 1 else None
    return Task(name, "mc", docs, chance=chance)


def load_generation(name: str, path: Path) -> Task:
    docs = []
    for lineno, obj in read_jsonl_items(path):
        where = f"{path}:{lineno}"
        answer = need_field(obj, "answer", where, (str, list, int, float))
        answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
        query = (
            obj["prompt"]
            if isinstance(obj.get("prompt"), str)
            else f"Question: {need_field(obj, 'question', where, str)}\nAnswer:"
        )
        docs.append(GenDoc(query, answers))
    return Task(name, "gen", docs, chance=0.0)


def guess_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "meta.json").is_file():
            return "bpb"
        if any(path.glob("*.csv")):
            return "mmlu"
        raise LmforgeError(f"{path}: a directory that is neither a token shard dir (meta.json) nor MMLU CSVs")
    if path.suffix == ".csv":
        return "mmlu"
    if path.suffix == ".txt":
        return "bpb"
    if path.suffix == ".jsonl":
        _, first = read_jsonl_items(path)[0]
        if "ctx_a" in first and "endings" in first:
            return "hellaswag"
        if "answerKey" in first:
            return "arc"
        if "choices" in first:
            return "mc"
        if "answer" in first:
            return "gen"
        if "text" in first:
            return "bpb"
    raise LmforgeError(
        f"{path}: cannot tell the task kind; write KIND:PATH with KIND one of {', '.join(KINDS)}"
    )


LOADERS = {
    "mmlu": load_mmlu,
    "hellaswag": load_hellaswag,
    "arc": load_arc,
    "mc": load_generic_mc,
    "gen": load_generation,
}


def parse_spec(spec: str) -> tuple[str, str, Path | None]:
    """`KIND:PATH` | `PATH` | built-in name -> (task name, kind, path)."""
    spec = spec.strip()
    if spec in BUILTIN:
        return spec, spec, None
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        path = Path(rest)
    elif Path(spec).exists():
        path = Path(spec)
        kind = guess_kind(path)
    else:
        import difflib

        close = difflib.get_close_matches(spec, list(BUILTIN) + [f"{k}:" for k in KINDS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LmforgeError(
            f"task {spec!r}: not a built-in task ({', '.join(BUILTIN)}), not KIND:PATH "
            f"(KIND one of {', '.join(KINDS)}) and no such file{hint}"
        )
    if not path.exists():
        raise LmforgeError(f"task {spec!r}: {path} not found")
    stem = path.name if path.is_dir() else path.stem
    return f"{kind}:{stem}", kind, path


def load_task(spec: str, **plays_kwargs: Any) -> Task:
    """A task from its spec (see the module docstring). `plays_kwargs` go to the plays builder."""
    name, kind, path = parse_spec(spec)
    if path is None:
        return load_plays_task(kind, **plays_kwargs)
    if kind == "bpb":
        return Task(name, "bpb", source=str(path))
    return LOADERS[kind](name, path)


# ---------------------------------------------------------------------------- the plays


_DEMO_CACHE: dict = {}  # (seed, DemoConfig) -> DemoTasks: building takes seconds, do it once


def load_plays_task(kind: str, tokenizer=None, seed: int = 1337, demo_cfg=None) -> Task:
    """The demo's held-out items (lmforge.tasks.demo, the one builder)."""
    from lmforge.tasks.config import DemoConfig
    from lmforge.tasks.demo import build_demo_tasks

    demo_cfg = demo_cfg or DemoConfig()
    key = (seed, repr(demo_cfg))
    if key not in _DEMO_CACHE:
        _DEMO_CACHE[key] = build_demo_tasks(demo_cfg, seed)
    demo = _DEMO_CACHE[key]
    if kind == "plays":
        docs = [MCDoc(f"{m.messages[-1]['content']}\nAnswer:", list(m.choices), m.gold) for m in demo.mc_eval]
        return Task(kind, "mc", docs, chance=0.25)
    if kind == "plays_answer":
        docs, checks = list(demo.mc_eval), list(demo.chat_eval)
        return Task(kind, "chat_answer", docs, chance=0.25, checks=checks, titles=list(demo.titles))
    if tokenizer is None:
        raise ValueError(f"task {kind} needs the tokenizer")
    end = [tokenizer.special_ids["<|end|>"]]

    def reply(text: str) -> list[int]:
        return tokenizer.encode_ordinary(text) + end

    def prompt(messages: list[dict]) -> list[int]:
        return list(tokenizer.render_chat(messages, add_generation_prompt=True)[0])

    if kind == "plays_chat":
        docs = [
            TokenMCDoc(prompt(m.messages), [reply(c) for c in m.choices], list(m.choices), m.gold)
            for m in demo.mc_eval
        ]
        return Task(kind, "token_mc", docs, chance=0.25)
    docs = [
        TokenMCDoc(prompt(p.messages), [reply(p.chosen), reply(p.rejected)], [p.chosen, p.rejected], 0)
        for p in demo.preference_eval
    ]
    return Task(kind, "token_mc", docs, chance=0.5)
