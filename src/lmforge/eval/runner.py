"""Run tasks on a model: the metrics as lm-eval computes them, with standard errors.

Multiple choice: requests (context, " " + choice); acc = [argmax of summed log-probs = gold],
acc_norm = the same after dividing each by len(choice) in characters; stderr of a mean =
sample std / sqrt(n) (lm-eval's `mean_stderr`). Generation: greedy until the task's stop
strings, exact_match after `normalize_answer`. Bits per byte: rolling windows (scoring.py);
bpb = -sum ln p / (ln 2 * bytes), plus byte, word and token perplexity.

Few-shot examples are drawn per item with `random.Random(seed + index)` from the task's pool
excluding the item (CORE's rule: independent of evaluation order); MMLU with a dev file takes
its first k rows as lm-eval does. Zero-shot prompts are exactly lm-eval's.
"""

from __future__ import annotations

import math
import random
import re
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import GenDoc, MCDoc, Task, need_field, read_jsonl_items
from lmforge.inference import scoring


def mean_stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------- prompts


def _target(doc: MCDoc | GenDoc) -> str:
    return doc.choices[doc.gold] if isinstance(doc, MCDoc) else doc.answers[0]


def fewshot_examples(task: Task, index: int, shots: int, seed: int) -> list:
    if shots <= 0:
        return []
    if task.fewshot_pool is not None:
        pool = task.fewshot_pool
        if task.fewshot_first_n:
            return list(pool[:shots])
    else:
        pool = task.docs[:index] + task.docs[index + 1 :]
    if len(pool) < shots:
        raise LmforgeError(
            f"task {task.name}: {shots}-shot needs {shots} other items, the pool has {len(pool)}"
        )
    return random.Random(seed + index).sample(pool, shots)


def build_context(task: Task, doc: MCDoc | GenDoc, examples: Sequence) -> str:
    """lm-eval's layout: description + (query + delimiter + target + "\\n\\n") per example + query."""
    shots = "".join(
        f"{ex.query}{task.target_delimiter}{_target(ex)}{task.fewshot_delimiter}" for ex in examples
    )
    return task.description + shots + doc.query


# ---------------------------------------------------------------------------- task kinds


def eval_mc(model, tok, task: Task, docs: list[MCDoc], contexts: list[str], batch_size: int) -> dict:
    requests = [(ctx, f"{task.target_delimiter}{c}") for doc, ctx in zip(docs, contexts) for c in doc.choices]
    scores = scoring.loglikelihoods(model, tok, requests, batch_size)
    return _mc_metrics(docs, [s for s, _ in scores], [[len(c) for c in d.choices] for d in docs])


def eval_token_mc(model, task: Task, docs: list, batch_size: int) -> dict:
    requests = [(d.context, c) for d in docs for c in d.choices]
    scores = scoring.token_loglikelihoods(model, requests, batch_size)
    return _mc_metrics(docs, [s for s, _ in scores], [[len(t) for t in d.choice_texts] for d in docs])


def _mc_metrics(docs: list, lls: list[float], lengths: list[list[int]]) -> dict:
    acc, acc_norm, k = [], [], 0
    for doc, lens in zip(docs, lengths):
        ll = np.array(lls[k : k + len(lens)])
        k += len(lens)
        acc.append(float(int(np.argmax(ll)) == doc.gold))
        acc_norm.append(float(int(np.argmax(ll / np.array(lens, dtype=float))) == doc.gold))
    return {
        "acc": sum(acc) / len(acc),
        "acc_stderr": mean_stderr(acc),
        "acc_norm": sum(acc_norm) / len(acc_norm),
        "acc_norm_stderr": mean_stderr(acc_norm),
    }


def generate_until(
    model, tok, contexts: Sequence[str], until: Sequence[str], max_gen_toks: int = 32
) -> list[str]:
    """Greedy completions cut at the first stop string; the context is left-cropped to leave room
    for `max_gen_toks` (HFLM's rule). Used by both `lmforge eval` and the lm-eval adapter."""
    from lmforge.inference import Engine, SamplingParams

    max_len = model.cfg.max_seq_len
    max_gen_toks = min(max_gen_toks, max_len - 1)
    prompts = [
        tok.encode_ordinary(c)[-(max_len - max_gen_toks) :] or [scoring.prefix_token_id(tok)]
        for c in contexts
    ]
    params = SamplingParams(max_new_tokens=max_gen_toks, temperature=0.0, stop=[u for u in until if u])
    outs = Engine(model, tok).generate(prompts, params)
    texts = []
    for out in outs:
        text = out.text
        for u in until:
            if u:
                text = text.split(u)[0]
        texts.append(text)
    return texts


def eval_gen(
    model, tok, task: Task, docs: list[GenDoc], contexts: list[str], max_gen_toks: int
) -> tuple[dict, list]:
    outs = generate_until(model, tok, contexts, task.until, max_gen_toks)
    em = [
        float(any(normalize_answer(o) == normalize_answer(a) for a in d.answers)) for d, o in zip(docs, outs)
    ]
    return {"exact_match": sum(em) / len(em), "exact_match_stderr": mean_stderr(em)}, outs


def eval_chat_answer(
    model,
    tok,
    docs: list,
    max_gen_toks: int,
    samples: int,
    checks: list | None = None,
    titles: Sequence[str] = (),
) -> tuple[dict, list]:
    """Greedy chat replies to 4-choice questions (lmforge.tasks.demo.MCItem): format and acc; with
    `titles` also title (a play title, listed or not); with `checks` (lmforge.tasks.demo.ChatCheck)
    also the shape of those replies (demo_eval.reply_checks)."""
    from lmforge.tasks.demo_eval import reply_checks, which_play_answers

    out = which_play_answers(model, tok, docs, max_gen_toks, titles)
    listed = [float(r.strip() in d.choices) for r, d in zip(out["replies"], docs)]
    right = [float(r.strip() == d.choices[d.gold]) for r, d in zip(out["replies"], docs)]
    metrics = {
        "format": out["format"],
        "format_stderr": mean_stderr(listed),
        "acc": out["accuracy"],
        "acc_stderr": mean_stderr(right),
    }
    if "title" in out:
        metrics["title"] = out["title"]
    if checks:
        metrics.update({k: v for k, v in reply_checks(model, tok, checks).items() if k != "replies"})
    shown = [
        {"prompt": d.messages[-1]["content"][-300:], "output": r, "answers": [d.choices[d.gold]]}
        for d, r in list(zip(docs, out["replies"]))[:samples]
    ]
    return metrics, shown


def read_bpb_documents(path: Path, limit: int) -> list[str]:
    if path.suffix == ".jsonl":
        docs = [need_field(obj, "text", f"{path}:{n}", str) for n, obj in read_jsonl_items(path)]
    else:
        try:
            docs = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise LmforgeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return docs[:limit] if limit else docs


def eval_bpb(
    model, tok, source: str, limit: int, max_tokens: int, batch_size: int, split: str = "val"
) -> dict:
    """Bits per byte of a text file (every byte counts) or a token shard (specials excluded, nanochat)."""
    path = Path(source)
    prefix = scoring.prefix_token_id(tok)
    if path.is_dir():
        from lmforge.shards import check_tokenizer, load_tokens

        check_tokenizer(path, tok)
        tokens = np.asarray(load_tokens(path, split)[: max_tokens or None], dtype=np.int64)
        if len(tokens) == 0:
            raise LmforgeError(f"{path}: the {split} split is empty")
        lp = scoring.rolling_token_logprobs(model, tokens.tolist(), prefix, batch_size)
        nbytes = np.asarray(tok.token_bytes(), dtype=np.int64)[tokens]
        keep = nbytes > 0
        nll, n_bytes, n_tokens, n_words, n_docs = (
            -float(lp[keep].sum()),
            int(nbytes.sum()),
            int(keep.sum()),
            0,
            0,
        )
    else:
        texts = read_bpb_documents(path, limit)
        lls = scoring.rolling_loglikelihoods(model, tok, texts, batch_size)
        nll = -sum(lls)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_tokens = sum(len(tok.encode_ordinary(t)) for t in texts)
        n_words = sum(len(re.split(r"\s+", t)) for t in texts)  # lm-eval's wikitext word count
        n_docs = len(texts)
    if n_bytes == 0:
        raise LmforgeError(f"{path}: nothing to score (0 bytes)")
    out = {
        "bits_per_byte": nll / (n_bytes * math.log(2)),
        "byte_perplexity": math.exp(nll / n_bytes),
        "token_perplexity": math.exp(nll / max(1, n_tokens)),
        "nll_per_token": nll / max(1, n_tokens),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }
    if n_words:
        out["word_perplexity"] = math.exp(nll / n_words)
    if n_docs:
        out["documents"] = n_docs
    return out


# ---------------------------------------------------------------------------- driver


def evaluate_task(
    model,
    tok,
    task: Task,
    shots: int = 0,
    limit: int = 0,
    seed: int = 1234,
    batch_size: int = 16,
    max_gen_toks: int = 32,
    bpb_max_tokens: int = 65536,
    samples: int = 3,
) -> dict[str, Any]:
    """One task's result: {"kind", "n", "metrics", "chance", "shots", "seconds", "samples"}."""
    t0 = time.time()
    result: dict[str, Any] = {"kind": task.kind, "chance": task.chance, "shots": shots}
    if task.kind == "bpb":
        result["metrics"] = eval_bpb(model, tok, task.source, limit, bpb_max_tokens, batch_size)
        result["n"] = result["metrics"].get("documents", result["metrics"]["tokens"])
        result["shots"] = 0
    else:
        docs = task.docs[:limit] if limit else task.docs
        result["n"] = len(docs)
        if task.kind == "token_mc":
            result["metrics"] = eval_token_mc(model, task, docs, batch_size)
            result["shots"] = 0
        elif task.kind == "chat_answer":
            result["metrics"], result["samples"] = eval_chat_answer(
                model, tok, docs, max_gen_toks, samples, task.checks, task.titles
            )
            result["shots"] = 0
        else:
            contexts = [
                build_context(task, d, fewshot_examples(task, i, shots, seed)) for i, d in enumerate(docs)
            ]
            if task.kind == "mc":
                result["metrics"] = eval_mc(model, tok, task, docs, contexts, batch_size)
            else:
                metrics, outs = eval_gen(model, tok, task, docs, contexts, max_gen_toks)
                result["metrics"] = metrics
                result["samples"] = [
                    {"prompt": c[-300:], "output": o, "answers": d.answers}
                    for c, o, d in list(zip(contexts, outs, docs))[:samples]
                ]
    result["seconds"] = round(time.time() - t0, 2)
    return result
