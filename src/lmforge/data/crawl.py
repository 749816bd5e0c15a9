"""The demo crawl: the embedded plays served as a WARC of web pages, with the junk a real crawl holds.

Each play is one page of an ordinary site: a header with navigation, a cookie banner, a
breadcrumb, the play in an `<article>` (a heading per act and scene, a paragraph per speech,
`<br>` between verse lines), a sidebar and a footer. Extracting the main text and normalising
it gives back the play's text exactly (tests/test_data_crawl.py), so what survives the data
stage is the corpus `embedded:shakespeare` reads. Planted among the plays, each for one step
to remove:

- pages without text (an image gallery, a script-only app shell): `extract`;
- French and German pages about the plays: `language`;
- "404" pages, link-list and keyword-stuffed spam pages: `gopher_quality`, `gopher_repetition`;
- abusive comment threads, well-formed English otherwise: `toxicity`;
- the print view of some plays (same page, another URL): `exact_dedup` (content);
- re-fetches of some play URLs after an edit note was added: `exact_dedup` (URL);
- mirrors of some plays on another site, lightly edited (a few words modernised, a few lines
  lost): `minhash_dedup`;
- a robots.txt and an image: reader rejects (responses without HTML).

Every choice comes from `random.Random(seed)`, and record IDs and dates are derived, not drawn
from the clock, so a seed always gives the same bytes. Pages keep the plays' order, and every
copy comes after its original, so dedup keeps the originals.
"""

from __future__ import annotations

import hashlib
import html
import io
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.embedded import Play, Speech, shakespeare_plays
from lmforge.fileio import atomic_write_bytes

CRAWL_NAME = "shakespeare-crawl"
CRAWL_SEED = 1337
CRAWL_FILE = "shakespeare-crawl.warc.gz"
SITE = "https://complete-works.example.org"
MIRROR = "http://bard-mirror.example.net"
WARC_DATE = "2024-04-23T00:00:00Z"
N_MIRRORS, N_PRINT_COPIES, N_REFETCHES = 6, 4, 2

_e = html.escape


@dataclass
class Page:
    url: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    kind: str = "play"  # play | mirror | print_copy | refetch | the junk kinds below | non_html


# ---------------------------------------------------------------------------- page chrome


def site_page(title: str, main: str, plays: tuple[Play, ...], host: str = SITE, year: int = 2024) -> str:
    links = "".join(f'<li><a href="{host}/plays/{p.slug}.html">{_e(p.title)}</a></li>' for p in plays[:12])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)} | The Complete Works</title>
<link rel="stylesheet" href="/static/site.css"><script src="/static/analytics.js"></script></head>
<body><header class="site-header"><nav><ul><li class="logo"><a href="/">The Complete Works</a></li>
<li><a href="/">Home</a></li><li><a href="/plays/">Plays</a></li>\
<li><a href="/sonnets/">Sonnets</a></li>{links}</ul></nav>
</header>
<div class="cookie-banner" id="cookies">This site uses cookies to improve your experience. \
<button>Accept all</button></div>
<div class="breadcrumb"><a href="/">Home</a> &rsaquo; <a href="/plays/">Plays</a> &rsaquo; {_e(title)}</div>
<main><article>
{main}
</article></main>
<aside class="sidebar"><h4>More plays</h4><ul>{links}</ul></aside>
<footer><p>Copyright {year} The Complete Works. All rights reserved.</p>
<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a> | \
<a href="/contact">Contact</a></p></footer>
</body></html>
"""


def play_article(play: Play, edit: random.Random | None = None) -> str:
    """The play as HTML whose extracted text is `embedded.play_text(play)`; `edit` makes a mirror's
    copy: about 3% of lines lose a word or have thou/thee/thy modernised, 1% are lost."""
    out = [f"<h1>{_e(play.title.upper())}</h1>"]
    act = None
    for scene in play.scenes:
        if scene.act and scene.act != act:
            act = scene.act
            out.append(f"<h2>{_e(act)}</h2>")
        if scene.heading:
            out.append(f"<h3>{_e(scene.heading)}</h3>")
        for item in scene.items:
            if isinstance(item, Speech):
                lines = [_edited(line, edit) for line in item.lines] if edit else item.lines
                out.append(
                    "<p>" + "<br>".join([_e(f"{item.speaker}:")] + [_e(x) for x in lines if x]) + "</p>"
                )
            else:
                out.append(f"<p>[{_e(item)}]</p>")
    return "\n".join(out)


_MODERN = {"thou": "you", "thee": "you", "thy": "your", "Thou": "You", "hath": "has", "doth": "does"}


def _edited(line: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.01:
        return ""
    if r < 0.04:
        words = [_MODERN.get(w, w) for w in line.split()]
        if words == line.split() and len(words) > 3:
            del words[rng.randrange(len(words))]
        return " ".join(words)
    return line


# ---------------------------------------------------------------------------- the junk

_FRENCH = (
    "Cette pièce est l'une des plus jouées du répertoire, et les metteurs en scène la reprennent chaque "
    "saison.",
    "Le héros hésite longtemps avant d'agir, ce qui donne à la tragédie sa tension.",
    "Les spectateurs de l'époque venaient nombreux au théâtre du Globe pour voir les nouvelles pièces.",
    "La traduction française la plus connue date du dix-neuvième siècle et reste très lue.",
    "Nous vous proposons ici un résumé de chaque acte, avec les personnages principaux.",
)
_GERMAN = (
    "Dieses Stück gehört zu den meistgespielten Werken auf den deutschen Bühnen.",
    "Die Übersetzung von Schlegel und Tieck hat die deutsche Sprache nachhaltig geprägt.",
    "Der Held zögert lange, bevor er handelt, und daraus entsteht die Spannung der Tragödie.",
    "Auf dieser Seite finden Sie eine Zusammenfassung jedes Aktes und eine Liste der Figuren.",
    "Viele Schulen lesen das Stück im Unterricht, weil es Fragen stellt, die bis heute gelten.",
)
_ABUSE = (
    "You are a complete idiot and nobody wants to read your stupid comments.",
    "Shut the fuck up, you worthless piece of shit.",
    "Anyone who likes this play is a moron and a fucking loser.",
    "Go to hell, you pathetic bastard, and take your garbage opinions with you.",
    "What a dumb ass post, the author is an ignorant fool.",
    "This is the shittiest site I have ever seen and the people who run it are clowns.",
    "I hope you choke on your own words, you disgusting pig.",
    "Fuck you and fuck everyone who agrees with you.",
    "Only a brainless jerk would write something this stupid.",
    "Nobody cares what you think, you miserable little shit.",
    "Get lost, you ugly fat slob, before somebody kicks your sorry ass.",
    "Your opinion is bullshit and so are you.",
    "What the hell is wrong with you, are you really this dumb?",
    "Stop posting crap, you annoying dickhead.",
    "Every word you write is idiotic garbage, you clueless twat.",
    "Damn, you must be the dumbest person on the whole internet.",
    "Piss off and never come back here, loser.",
    "You stupid bitch, learn to read before you comment.",
    "I would slap you if you said that to my face, you coward.",
    "This whole thread is full of morons and assholes like you.",
)
_REPLY = (
    "Posted by a reader on the discussion board.",
    "Reply to the comment above.",
    "This comment was reported by other readers.",
    "Edited two hours after posting.",
    "Several people agreed with this comment.",
    "Sent from a mobile phone.",
)
_STUFFING = "Buy the best cheap essays online and get them delivered to you with the fastest essay service."
_CASINO = (
    "Best casino bonus",
    "Free spins today",
    "Online slots real money",
    "Top poker rooms",
    "Win big now",
    "Cheap flights deals",
    "Download free movies",
    "Casino no deposit bonus",
    "Sports betting tips",
)


def _paragraphs(texts: list[str]) -> str:
    return "\n".join(f"<p>{_e(t)}</p>" for t in texts)


def _junk_pages(rng: random.Random, plays: tuple[Play, ...]) -> list[Page]:
    pages: list[Page] = []

    def add(kind: str, path: str, title: str, main: str) -> None:
        pages.append(Page(f"{SITE}{path}", site_page(title, main, plays).encode(), kind=kind))

    for i in range(2):  # no text at all
        imgs = "".join(f'<img src="/img/stage-{i}-{k}.jpg" alt="">' for k in range(12))
        add("no_text", f"/gallery/{i}.html", "Gallery", f'<div class="gallery">{imgs}</div>')
    add("no_text", "/app/", "Reader", '<div id="root"></div><script>window.boot()</script>')
    for lang, pool in (("fr", _FRENCH), ("de", _GERMAN), ("fr", _FRENCH), ("de", _GERMAN)):
        play = rng.choice(plays)
        sents = [rng.choice(pool) for _ in range(14)]
        add(
            f"language_{lang}",
            f"/{lang}/{play.slug}.html",
            play.title,
            _paragraphs([" ".join(sents[k : k + 3]) for k in range(0, 14, 3)]),
        )
    for i in range(3):
        add(
            "short",
            f"/missing/{i}.html",
            "Not found",
            "<h1>Page not found</h1><p>The page you requested could not be found. Try the search box.</p>",
        )
    for i in range(3):
        items = "".join(
            f'<li><a href="/go/{k}">{_e(rng.choice(_CASINO))} {rng.randrange(100)}</a></li>'
            for k in range(40)
        )
        add("link_spam", f"/partners/{i}.html", "Partners", f"<ul>{items}</ul>")
    for i in range(3):
        add("keyword_spam", f"/essays/{i}.html", "Essays", _paragraphs([_STUFFING] * rng.randint(12, 20)))
    for i in range(4):  # abuse in otherwise ordinary English
        play = rng.choice(plays)
        abuse, replies = rng.sample(_ABUSE, 12), rng.sample(_REPLY, 6)
        comments = [f"{abuse[2 * k]} {abuse[2 * k + 1]} {replies[k]}" for k in range(6)]
        add(
            "toxic",
            f"/plays/{play.slug}/comments-{i}.html",
            f"Comments on {play.title}",
            f"<h1>Comments on {_e(play.title)}</h1>" + _paragraphs(comments),
        )
    pages.append(Page(f"{SITE}/robots.txt", b"User-agent: *\nDisallow: /app/\n", "text/plain", "non_html"))
    pages.append(
        Page(f"{SITE}/img/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png", "non_html")
    )
    return pages


# ---------------------------------------------------------------------------- the crawl


def crawl_pages(seed: int = CRAWL_SEED) -> list[Page]:
    """Every page of the crawl, in crawl order."""
    rng = random.Random(seed)
    plays = shakespeare_plays()
    n = len(plays)
    keyed: list[tuple[float, Page]] = []
    for i, play in enumerate(plays):
        url = f"{SITE}/plays/{play.slug}.html"
        keyed.append((i, Page(url, site_page(play.title, play_article(play), plays).encode())))
    for i in rng.sample(range(n), N_MIRRORS):
        play = plays[i]
        body = site_page(play.title, play_article(play, random.Random(f"{seed}:{play.slug}")), plays, MIRROR)
        keyed.append(
            (rng.uniform(i + 0.5, n), Page(f"{MIRROR}/bard/{play.slug}", body.encode(), kind="mirror"))
        )
    for i in rng.sample(range(n), N_PRINT_COPIES):
        original = keyed[i][1]
        keyed.append(
            (
                rng.uniform(i + 0.5, n),
                Page(f"{SITE}/print/{plays[i].slug}.html", original.body, kind="print_copy"),
            )
        )
    for i in rng.sample(range(n), N_REFETCHES):
        play = plays[i]
        main = "<p>[This page was updated.]</p>\n" + play_article(play)
        keyed.append(
            (
                rng.uniform(i + 0.5, n),
                Page(
                    f"{SITE}/plays/{play.slug}.html",
                    site_page(play.title, main, plays, year=2025).encode(),
                    kind="refetch",
                ),
            )
        )
    keyed += [(rng.uniform(0, n), page) for page in _junk_pages(rng, plays)]
    keyed.sort(key=lambda kp: kp[0])  # stable: ties keep insertion order
    return [page for _, page in keyed]


def crawl_warc(seed: int = CRAWL_SEED, compress: bool = False) -> bytes:
    """The crawl as WARC bytes (response records with HTTP headers), the same bytes for the same seed."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=compress)
    for k, page in enumerate(crawl_pages(seed)):
        digest = hashlib.blake2b(f"{seed}\0{k}\0{page.url}".encode(), digest_size=16).digest()
        headers = StatusAndHeaders("200 OK", [("Content-Type", page.content_type)], protocol="HTTP/1.1")
        record = writer.create_warc_record(
            page.url,
            "response",
            payload=io.BytesIO(page.body),
            http_headers=headers,
            warc_headers_dict={
                "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(bytes=digest)}>",
                "WARC-Date": WARC_DATE,
            },
        )
        writer.write_record(record)
    return buf.getvalue()


def write_crawl(out_dir: str | Path, seed: int = CRAWL_SEED) -> Path:
    """Write the crawl to OUT_DIR/shakespeare-crawl.warc.gz (atomically); returns its path."""
    path = Path(out_dir) / CRAWL_FILE
    atomic_write_bytes(path, crawl_warc(seed, compress=True))
    return path
