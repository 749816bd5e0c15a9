"""Tokenizer benchmark: lmforge vs HF tokenizers (BpeTrainer, encode_batch) vs tiktoken, same inputs.

Measures, in one process tree:
  * training time for the same split pattern (GPT-4) and vocabulary size: lmforge `Tokenizer.train`
    vs HF tokenizers' BpeTrainer (Split(GPT-4 regex) + ByteLevel, all 256 bytes as the alphabet);
  * encode throughput (MB/s of UTF-8) with 1 and 2 threads: lmforge `encode_batch` vs HF
    `encode_batch` (RAYON_NUM_THREADS set in a child process) vs tiktoken built from the same ranks;
  * compression (bytes per token) on held-out documents, both tokenizers at the same vocabulary size;
  * identical ids: lmforge vs the exported tokenizer.json on the held-out text.

Corpora: `shakespeare` = the embedded plays (one document per play; every 10th play held out);
`100mb` = the plays + the .py/.rst/.txt/.md files of the Python standard library, then of the
installed site-packages, in sorted path order, up to 100 MB of UTF-8 (one document per file;
every 50th document held out). Nothing is downloaded.

usage:
  .venv/bin/python benchmarks/tokenizer.py --corpus shakespeare
  .venv/bin/python benchmarks/tokenizer.py --corpus 100mb --encode-mb 20
"""

from __future__ import annotations

import argparse
import json
import os
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
    seconds = timed(lambda: hf.encode_batch(texts))
    print(json.dumps({"threads": threads, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["shakespeare", "100mb"], default="shakespeare")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument(
        "--encode-mb", type=float, default=0, help="cap the encode-throughput text (0: the whole corpus)"
    )
    ap.add_argument("--skip-train-hf", action="store_true")
    ap.add_argument("--hf-encode-child", nargs=2, metavar=("JSON", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_encode_child:
        hf_encode_child(args.hf_encode_child[0], int(args.hf_encode_child[1]))
        return

    train, held = load_corpus(args.corpus)
    print(
        f"corpus {args.corpus}: {len(train)} train docs, {mb(train):.1f} MB; "
        f"{len(held)} held-out docs, {mb(held):.2f} MB"
    )
    print(
        f"machine: {len(os.sched_getaffinity(0))} usable cores of {os.cpu_count()}; "
        f"vocab {args.vocab_size}; pattern gpt4"
    )

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
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
            out = subprocess.run(
                [sys.executable, __file__, "--hf-encode-child", str(job), str(threads)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            t_h = json.loads(out.strip().splitlines()[-1])["seconds"]
            print(
                f"  {threads} thread(s): lmforge {size_mb / t_l:6.2f}  HF {size_mb / t_h:6.2f}  "
                f"tiktoken {size_mb / t_t:6.2f}   lmforge/HF = {t_h / t_l:.2f}x"
            )


if __name__ == "__main__":
    main()
