"""Raw sources -> clean, filtered, deduplicated document shards (the recipe's `data` section).

Writes RUN_DIR/data/docs/NNNNN.jsonl.zst, stats.json, summary.md and rejects/. A killed run
started again resumes from its finished tasks and ends with the same bytes.

examples:
  lmforge data recipes/shakespeare.yaml
  lmforge data my.yaml --workers 8 --data.inputs '["crawl/*.warc.gz"]'
  lmforge data my.yaml --dry-run --sample 100          # what each rule would remove; writes nothing
  lmforge data my.yaml --data.steps '[extract, normalize, language, gopher_quality, minhash_dedup]'
  lmforge data train-classifier --positive good.jsonl --negative spam.jsonl --out quality.npz
      (then: steps [..., classifier] with --data.classifier.path quality.npz --data.classifier.threshold 0.5)
  lmforge data crawl --out crawl/ [--seed 1337]       # the demo crawl as crawl/shakespeare-crawl.warc.gz
      (recipes/shakespeare.yaml reads the same crawl as embedded:shakespeare-crawl)
"""

from __future__ import annotations

import argparse
import json

from lmforge.commands._common import add_recipe_argument

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="preview what each rule removes; write nothing")
    p.add_argument("--sample", type=int, default=100, help="documents read by --dry-run (default: 100)")
    p.add_argument(
        "--workers", type=int, default=None, help="parallel worker processes (default: data.workers)"
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="where tasks run (default: data.executor, i.e. local)",
    )
    g = p.add_argument_group(
        "train-classifier and crawl (use `train-classifier` or `crawl` in place of RECIPE)"
    )
    g.add_argument(
        "--positive", nargs="+", default=[], help="inputs of the class to keep (files, folders, globs)"
    )
    g.add_argument("--negative", nargs="+", default=[], help="inputs of the class to drop")
    g.add_argument(
        "--out",
        default=None,
        help="train-classifier: model file to write (default: classifier.npz); crawl: folder",
    )
    g.add_argument("--text-field", default="text", help="JSONL/Parquet text field (default: text)")
    g.add_argument("--epochs", type=int, default=200, help="full-batch Adam steps (default: 200)")
    g.add_argument("--dim-bits", type=int, default=18, help="log2 of the hashed feature count (default: 18)")
    g.add_argument(
        "--holdout", type=float, default=0.1, help="fraction held out to report accuracy (default: 0.1)"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed for the held-out split, or of the crawl's planted pages (default: 1337)",
    )
    add_recipe_argument(p, ["data"])


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.recipe == "train-classifier":
        return train_classifier(args)
    if args.recipe == "crawl":
        return write_demo_crawl(args)
    from lmforge.data.pipeline import run_pipeline
    from lmforge.data.preview import preview
    from lmforge.data.stats import render_summary
    from lmforge.recipe import load_recipe
    from lmforge.stages.data import output_dir

    recipe = load_recipe(args.recipe, overrides)
    if args.dry_run:
        stats = preview(recipe.data, args.sample)
        print(render_summary(stats))
        return 0
    out = output_dir(recipe, recipe.run_path)
    stats = run_pipeline(recipe.data, out, workers=args.workers, executor=args.executor)
    print(render_summary(stats))
    print(
        f"wrote {out / 'docs'} ({len(stats['output']['shards'])} shards), "
        f"{out / 'stats.json'}, {out / 'summary.md'}"
    )
    return 0


def write_demo_crawl(args: argparse.Namespace) -> int:
    from lmforge.data.crawl import crawl_pages, write_crawl
    from lmforge.errors import LmforgeError

    if not args.out:
        raise LmforgeError("crawl needs --out FOLDER")
    path = write_crawl(args.out, args.seed)
    kinds: dict[str, int] = {}
    for page in crawl_pages(args.seed):
        kinds[page.kind] = kinds.get(page.kind, 0) + 1
    print(json.dumps(kinds))
    print(f"wrote {path}")
    return 0


def train_classifier(args: argparse.Namespace) -> int:
    import numpy as np

    from lmforge.data.classifiers import Featurizer, HashedNgramClassifier
    from lmforge.data.inputs import read_text_documents
    from lmforge.errors import LmforgeError

    if not args.positive or not args.negative:
        raise LmforgeError("train-classifier needs --positive and --negative inputs")
    pos = [d.text for d in read_text_documents(args.positive, args.text_field)]
    neg = [d.text for d in read_text_documents(args.negative, args.text_field)]
    texts, labels = pos + neg, [1] * len(pos) + [0] * len(neg)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    n_hold = int(len(texts) * args.holdout) if len(texts) >= 20 else 0
    hold, train = order[:n_hold], order[n_hold:]
    feat = Featurizer(dim_bits=args.dim_bits)
    model = HashedNgramClassifier.train(
        [texts[i] for i in train], [labels[i] for i in train], feat, epochs=args.epochs
    )
    report = {"positive": len(pos), "negative": len(neg), "train": int(train.size), "holdout": int(hold.size)}
    for name, idx in (("train_accuracy", train), ("holdout_accuracy", hold)):
        if idx.size:
            p = model.predict_proba([texts[i] for i in idx])
            report[name] = round(float(np.mean((p >= 0.5) == np.array([labels[i] for i in idx]))), 4)
    out = args.out or "classifier.npz"
    model.save(out)
    print(json.dumps(report))
    print(f"wrote {out}")
    return 0
