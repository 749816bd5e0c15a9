"""Tokenizer benchmark: lmforge vs HF tokenizers (BpeTrainer, encode_batch) vs tiktoken, same inputs.

Parts (`--parts`, default all three):
  compare   training time for the same split pattern (GPT-4) and vocabulary size: lmforge
            `Tokenizer.train` vs HF tokenizers' BpeTrainer (Split(GPT-4 regex) + ByteLevel, all 256
            bytes as the alphabet); encode throughput (MB/s of UTF-8) with 1 and 2 threads: lmforge
            `encode_batch` vs HF `encode_batch` (RAYON_NUM_THREADS set in a child process) vs tiktoken
            built from the same ranks; compression (bytes per token) on held-out documents, both
            tokenizers at the same vocabulary size; identical ids: lmforge vs the exported tokenizer.json.
  tokenize  tokenize MB/s with 1 and 2 workers on the generated corpus of `--tokenize-mb`: lmforge
            `tokenize_documents` on the texts in memory (encode + write the shards) and from the
            JSONL file (read + encode + write, what `lmforge tokenize` runs) vs HF `encode_batch` on
            the exported tokenizer.json, same texts.
  memory    peak RSS of tokenizer training and of tokenize (the functions `lmforge tokenizer train`
            and `lmforge tokenize` call, on all cores) on each generated corpus of `--memory-mb`
            (default 10 and 100 MB), each in its own process: the process's VmHWM (Linux) and the
            largest of its chunk-counting worker processes (RUSAGE_CHILDREN).

Corpora: `shakespeare` = the embedded plays (one document per play; every 10th play held out);
`100mb` = the plays + the .py/.rst/.txt/.md files of the Python standard library, then of the
installed site-packages, in sorted path order, up to 100 MB of UTF-8 (one document per file;
every 50th document held out). The generated corpora of `tokenize` and `memory` are JSONL: the
plays, then copies of them with their speeches shuffled and a word of half the speeches misspelt,
in documents of 16 speeches (`generated_corpus`). Nothing is downloaded.

usage:
  .venv/bin/python benchmarks/tokenizer.py --corpus shakespeare
  .venv/bin/python benchmarks/tokenizer.py --corpus 100mb --encode-mb 20 --parts compare
  .venv/bin/python benchmarks/tokenizer.py --parts tokenize,memory
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from lmforge.data.embedded import embedded_documents
from lmforge.tokenizer import DEFAULT_SPECIALS, Tokenizer
from lmforge.tokenizer.patterns import GPT4


def load_corpus(name: str, target_bytes: int = 100_000_000) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents) of a named corpus."""
    plays = [text for _, text in embedded_documents("shakespeare")]
    if name == "shakespeare":
        return [p for i, p in enumerate(plays) if i % 10 != 9], plays[9::10]
    docs, size = list(plays), sum(len(p.encode()) for p in plays)
    roots = [Path(sysconfig.get_paths()[key]) for key in ("stdlib", "purelib")]
    for path in (p for root in roots for p in sorted(root.rglob("*"))):
        if size >= target_bytes:
            break
        if path.suffix not in (".py", ".rst", ".txt", ".md") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        size += len(text.encode())
    return [d for i, d in enumerate(docs) if i % 50 != 49], docs[49::50]


def hf_trainer_tokenizer():
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


def train_hf(docs: list[str], vocab_size: int):
    from tokenizers import pre_tokenizers, trainers

    tok = hf_trainer_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=DEFAULT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def mb(texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def hf_encode_child(path: str, threads: int) -> None:
    """Child process: time HF encode_batch with RAYON_NUM_THREADS already set by the parent."""
    from tokenizers import Tokenizer as HFTokenizer

    data = json.loads(Path(path).read_text())
    hf = HFTokenizer.from_file(data["tokenizer"])
    texts = data["texts"]
    hf.encode_batch(texts[:10])
    seconds = timed(lambda: hf.encode_batch(texts), data.get("repeat", 3))
    print(json.dumps({"threads": threads, "seconds": seconds}))


def hf_encode_seconds(job: Path, threads: int) -> float:
    """Best time of HF encode_batch over the job's texts, in a child process on `threads` threads."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    out = subprocess.run(
        [sys.executable, __file__, "--hf-encode-child", str(job), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def generated_corpus(path: Path, target_mb: float, seed: int = 0) -> float:
    """Write about `target_mb` MB of text to `path` as JSONL ({"text": ...}); returns the MB written.

    The plays as they are, then copies of them with the speeches (blank-line separated blocks) of
    each play shuffled and, in half of them, one word misspelt, so that the text does not repeat
    and its distinct chunks keep growing with its size, as in real text. 16 speeches a document.
    """
    plays = [text.split("\n\n") for _, text in embedded_documents("shakespeare")]
    rng = random.Random(seed)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        for copy in itertools.count():
            for speeches in plays:
                if copy:
                    speeches = rng.sample(speeches, len(speeches))
                    speeches = [misspelt(s, rng) if rng.random() < 0.5 else s for s in speeches]
                for i in range(0, len(speeches), 16):
                    text = "\n\n".join(speeches[i : i + 16])
                    f.write(json.dumps({"text": text}) + "\n")
                    size += len(text.encode())
                    if size >= target_mb * 1e6:
                        return size / 1e6
    raise AssertionError("unreachable")


def misspelt(speech: str, rng: random.Random) -> str:
    """`speech` with one word changed: two letters swapped, a letter doubled, upper case or a number added."""
    words = speech.split(" ")
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 3:
        j = rng.randrange(1, len(w) - 2)
        swapped, doubled = w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j] + w[j:]
        words[i] = rng.choice((swapped, doubled, w.upper(), w + str(rng.randrange(100))))
    return " ".join(words)


def status_bytes(key: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def step_child(spec: str) -> None:
    """Child process: run one step as its verb does; print its time and peak RSS as JSON.

    `spec` is JSON: {"step": "train" | "tokenize", "corpus", "tokenizer" (dir), "out", "workers",
    "vocab_size"}. The step runs the functions `lmforge tokenizer train` / `lmforge tokenize` call,
    without `lmforge.cli`, whose import (torch, through the recipe) would dominate the figure. The
    peak is VmHWM, which starts afresh at exec (ru_maxrss would keep the parent's peak from before
    the exec); the chunk-counting workers are forked and waited for, so RUSAGE_CHILDREN holds the
    largest of them.
    """
    from lmforge.data.inputs import read_input_documents
    from lmforge.shards import tokenize_documents

    job = json.loads(spec)
    start = status_bytes("VmRSS")
    t0 = time.perf_counter()
    docs = read_input_documents([job["corpus"]])
    if job["step"] == "train":
        texts = (doc.text for doc in docs)
        tok = Tokenizer.train(texts, job["vocab_size"], workers=job["workers"], progress=False)
        tok.save(job["tokenizer"])
    else:
        tok = Tokenizer.load(job["tokenizer"])
        tokenize_documents(tok, docs, job["out"], workers=job["workers"], progress=False)
    seconds = time.perf_counter() - t0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    peak = status_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "start": start, "peak": peak, "workers_peak": workers}))


def run_step(**job) -> dict:
    """Seconds and peak RSS of one step, run in a fresh process (see `step_child`)."""
    spec = json.dumps({"workers": 0, "out": "", **job})
    out = subprocess.run(
        [sys.executable, __file__, "--step-child", spec], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def load_label() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"loaded box: load average {load} (1, 5, 15 min) on {len(os.sched_getaffinity(0))} usable cores"


def tokenize_part(args: argparse.Namespace, work: Path) -> None:
    """Tokenize MB/s, 1 and 2 workers: tokenize_documents and `lmforge tokenize` vs HF encode_batch."""
    from lmforge.shards import tokenize_documents

    corpus = work / "tokenize.jsonl"
    size = generated_corpus(corpus, args.tokenize_mb)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tok = Tokenizer.train(texts, args.vocab_size, progress=False)
    tok_dir = tok.save(work / "tokenize-tokenizer")
    job = work / "tokenize-job.json"
    job_data = {"tokenizer": str(tok_dir / "tokenizer.json"), "texts": texts, "repeat": args.repeat}
    job.write_text(json.dumps(job_data))
    print(
        f"tokenize throughput on {size:.1f} MB of generated text ({len(texts)} docs, vocab "
        f"{tok.vocab_size}), MB/s, best of {args.repeat} ({load_label()}):"
    )
    for workers in (1, 2):
        t_lib = timed(
            lambda n=workers: tokenize_documents(tok, texts, work / "tokens", workers=n, progress=False),
            args.repeat,
        )
        step = {"step": "tokenize", "corpus": str(corpus), "tokenizer": str(tok_dir), "out": str(work / "t")}
        t_jsonl = min(run_step(**step, workers=workers)["seconds"] for _ in range(args.repeat))
        t_hf = hf_encode_seconds(job, workers)
        print(
            f"  {workers} worker(s): tokenize_documents {size / t_lib:6.2f}  from JSONL "
            f"{size / t_jsonl:6.2f}  HF encode_batch {size / t_hf:6.2f}   tokenize_documents/HF = "
            f"{t_hf / t_lib:.2f}x"
        )
    print(f"  ({load_label()})")


def memory_part(args: argparse.Namespace, work: Path) -> None:
    """Peak RSS of `lmforge tokenizer train` and `lmforge tokenize` on each generated corpus size."""
    print(f"peak RSS, each step in its own process, vocab {args.vocab_size}, all cores ({load_label()})")
    mib = 2**20
    for target in args.memory_mb:
        corpus = work / f"memory-{target:g}mb.jsonl"
        size = generated_corpus(corpus, target)
        tok_dir = work / f"memory-tokenizer-{target:g}"
        steps = {
            "tokenizer train": {"step": "train", "vocab_size": args.vocab_size},
            "tokenize": {"step": "tokenize", "out": str(work / f"memory-tokens-{target:g}")},
        }
        for name, step in steps.items():
            r = run_step(**step, corpus=str(corpus), tokenizer=str(tok_dir))
            workers = f", largest worker {r['workers_peak'] / mib:6.1f} MiB" if r["workers_peak"] else ""
            print(
                f"  {size:6.1f} MB  {name:16s} peak {r['peak'] / mib:7.1f} MiB (at start "
                f"{r['start'] / mib:5.1f}){workers}, {r['seconds']:6.1f} s"
            )
        corpus.unlink()
    print(f"  ({load_label()})")


PARTS = ("compare", "tokenize", "memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)} (default: all)"
    )
    ap.add_argument("--corpus", choices=["shakespeare", "100mb"], default="shakespeare", help="of `compare`")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument(
        "--encode-mb", type=float, default=0, help="cap the encode-throughput text (0: the whole corpus)"
    )
    ap.add_argument("--skip-train-hf", action="store_true")
    ap.add_argument("--tokenize-mb", type=float, default=10, help="generated MB for `tokenize` (default: 10)")
    ap.add_argument(
        "--memory-mb", type=float, nargs="+", default=[10, 100], help="generated corpus sizes for `memory`"
    )
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs in `tokenize` (default: 3)")
    ap.add_argument("--hf-encode-child", nargs=2, metavar=("JSON", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--step-child", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_encode_child:
        hf_encode_child(args.hf_encode_child[0], int(args.hf_encode_child[1]))
        return
    if args.step_child:
        step_child(args.step_child)
        return
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown} (choose from {', '.join(PARTS)})")
    print(f"machine: {len(os.sched_getaffinity(0))} usable cores of {os.cpu_count()}; {load_label()}")
    if "compare" in parts:
        compare_part(args)
    with tempfile.TemporaryDirectory() as work:
        if "tokenize" in parts:
            tokenize_part(args, Path(work))
        if "memory" in parts:
            memory_part(args, Path(work))


def compare_part(args: argparse.Namespace) -> None:
    """Training time, compression and encode throughput against HF tokenizers and tiktoken."""
    train, held = load_corpus(args.corpus)
    print(
        f"corpus {args.corpus}: {len(train)} train docs, {mb(train):.1f} MB; "
        f"{len(held)} held-out docs, {mb(held):.2f} MB"
    )
    print(f"vocab {args.vocab_size}; pattern gpt4")

    t0 = time.perf_counter()
    ours = Tokenizer.train(train, args.vocab_size, progress=False)
    t_ours = time.perf_counter() - t0
    print(f"train lmforge        {t_ours:8.2f} s  ({ours.train_stats})")
    t0 = time.perf_counter()
    hf = train_hf(train, args.vocab_size)
    t_hf = time.perf_counter() - t0
    print(f"train HF BpeTrainer  {t_hf:8.2f} s")
    print(f"train time ratio lmforge/HF = {t_ours / t_hf:.2f}x (target <= 3x)")

    held_bytes = sum(len(d.encode()) for d in held)
    bpt_ours = held_bytes / sum(map(len, ours.encode_batch(held, disallowed_special=())))
    bpt_hf = held_bytes / sum(len(e.ids) for e in hf.encode_batch(held))
    print(
        f"held-out bytes/token: lmforge {bpt_ours:.4f}  HF {bpt_hf:.4f}  "
        f"ratio {bpt_ours / bpt_hf:.4f} (target within 1%)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ours.save(tmp)
        from tokenizers import Tokenizer as HFTokenizer

        exported = HFTokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
        same = all(exported.encode(d).ids == ours.encode(d, disallowed_special=()) for d in held)
        print(f"lmforge ids == exported tokenizer.json ids on held-out text: {same}")

        texts = train + held
        if args.encode_mb:
            cap, size, kept = args.encode_mb * 1e6, 0, []
            for t in texts:
                if size >= cap:
                    break
                kept.append(t)
                size += len(t.encode())
            texts = kept
        size_mb = mb(texts)
        enc = ours.to_tiktoken()
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"tokenizer": str(Path(tmp) / "tokenizer.json"), "texts": texts}))
        print(f"encode throughput on {size_mb:.1f} MB ({len(texts)} docs), MB/s, best of 3:")
        for threads in (1, 2):
            t_l = timed(lambda n=threads: ours.encode_batch(texts, num_threads=n, disallowed_special=()))
            t_t = timed(lambda n=threads: enc.encode_ordinary_batch(texts, num_threads=n))
            t_h = hf_encode_seconds(job, threads)
            print(
                f"  {threads} thread(s): lmforge {size_mb / t_l:6.2f}  HF {size_mb / t_h:6.2f}  "
                f"tiktoken {size_mb / t_t:6.2f}   lmforge/HF = {t_h / t_l:.2f}x"
            )


if __name__ == "__main__":
    main()
