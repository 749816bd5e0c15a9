"""Evaluation scoring benchmark: lmforge's scorer vs lm-eval's HFLM on the same checkpoint and requests.

The checkpoint is exported with `lmforge.model.convert.export_hf` and loaded by lm-eval's HFLM
(transformers LlamaForCausalLM), the way a user would otherwise evaluate it. Both score the
same multiple-choice requests: the demo's held-out "which play" questions as plain text, each
choice as " " + title. Printed: seconds for each, the speed ratio, the largest difference in
log-likelihood, and acc from both (best of --repeats alternating runs).

usage:
  .venv/bin/python benchmarks/eval.py --model runs/shakespeare --items 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint, stage or run directory")
    ap.add_argument("--items", type=int, default=100, help="questions (4 requests each)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs; the best time of each is kept")
    args = ap.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lmforge.checkpoint.consolidated import load_model, resolve_checkpoint
    from lmforge.eval.api import plays_kwargs
    from lmforge.eval.tasks import load_task
    from lmforge.inference.scoring import loglikelihoods
    from lmforge.model.convert import export_hf

    torch.set_num_threads(os.cpu_count() or 1)
    ckpt = resolve_checkpoint(args.model)
    model, tok = load_model(ckpt)
    task = load_task("plays", **plays_kwargs(tok, ckpt))
    docs = task.docs[: args.items]
    requests = [(d.query, f" {c}") for d in docs for c in d.choices]

    t0 = time.perf_counter()
    ours = loglikelihoods(model, tok, requests, args.batch_size)
    t_ours = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tok, tmp)
        hflm = HFLM(
            pretrained=tmp, batch_size=args.batch_size, device="cpu", max_length=model.cfg.max_seq_len
        )
        insts = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
        t0 = time.perf_counter()
        theirs = hflm.loglikelihood(insts, disable_tqdm=True)
        t_theirs = time.perf_counter() - t0

    def acc(scores):
        hits = 0
        for i, d in enumerate(docs):
            lls = [s for s, _ in scores[4 * i : 4 * i + 4]]
            hits += int(max(range(4), key=lls.__getitem__) == d.gold)
        return hits / len(docs)

    diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    print(
        f"checkpoint {ckpt} ({model.num_params():,} params), {len(requests)} requests, "
        f"batch {args.batch_size}"
    )
    print(f"lmforge scorer      {t_ours:8.2f} s   acc {acc(ours):.4f}")
    print(f"lm-eval HFLM (HF)   {t_theirs:8.2f} s   acc {acc(theirs):.4f}")
    print(f"speed ratio lmforge / HFLM: {t_theirs / t_ours:.2f}x   max |loglik diff| {diff:.2e}")


if __name__ == "__main__":
    main()
