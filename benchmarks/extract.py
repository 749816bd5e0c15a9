"""Extraction backends side by side: pages/s of trafilatura and resiliparse, and their agreement.

The crawl is generated (nothing downloaded): every scene of the embedded plays as its own page in
the demo crawl's site chrome (navigation, cookie banner, breadcrumb, sidebar, footer;
lmforge.data.crawl). Agreement is the share of pages where the two main texts overlap by at
least 90% (shared words, counted with multiplicity, over the longer text's words); each
backend is also compared with the scene's own text. One process, one core, no sandbox.

    python benchmarks/extract.py [--pages N]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from lmforge.data.crawl import play_article, site_page
from lmforge.data.embedded import Play, play_text, shakespeare_plays
from lmforge.data.extract import extract_text


def scene_pages(limit: int) -> list[tuple[str, str]]:
    """(html, the scene's text) for up to `limit` scenes."""
    plays = shakespeare_plays()
    pages = []
    for play in plays:
        for scene in play.scenes:
            one = Play(play.slug, play.title, play.genre, [scene])
            pages.append(
                (site_page(f"{play.title}, {scene.heading}", play_article(one), plays), play_text(one))
            )
            if len(pages) == limit:
                return pages
    return pages


def overlap(a: str, b: str) -> float:
    wa, wb = Counter(a.split()), Counter(b.split())
    longer = max(sum(wa.values()), sum(wb.values()))
    return sum((wa & wb).values()) / longer if longer else 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=400)
    args = ap.parse_args()
    pages = scene_pages(args.pages)
    mb = sum(len(h.encode()) for h, _ in pages) / 1e6
    texts = {}
    for backend in ("trafilatura", "resiliparse"):
        extract_text(pages[0][0], backend=backend, timeout=0)  # imports, first-call set-up
        t0 = time.perf_counter()
        texts[backend] = [extract_text(h, backend=backend, timeout=0)[0] for h, _ in pages]
        dt = time.perf_counter() - t0
        truth = sum(overlap(t, ref) >= 0.9 for t, (_, ref) in zip(texts[backend], pages)) / len(pages)
        print(
            f"{backend:12s} {len(pages) / dt:8.1f} pages/s  {mb / dt:6.2f} MB/s  "
            f"main text within 90% of the scene: {truth:.3f}"
        )
    agree = sum(overlap(a, b) >= 0.9 for a, b in zip(texts["trafilatura"], texts["resiliparse"])) / len(pages)
    print(f"agreement (overlap >= 90%): {agree:.3f} of {len(pages)} pages ({mb:.1f} MB of HTML)")


if __name__ == "__main__":
    main()
