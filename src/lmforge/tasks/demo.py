"""The demo tasks: post-training data and held-out evaluation sets built from the plays.

Every scene of every play goes either to training or to evaluation (`eval_scene_fraction`
of each play's scenes, drawn from the seed), so nothing evaluated was post-trained on. With
`rl_scene_fraction`, that share of each play's training scenes is kept for GRPO's prompts alone:
questions about passages SFT never answered, where the model is as unsure as on the held-out ones.
From the (other) training scenes come
  - SFT conversations: "which play is this passage from" (the titles offered after the passage,
    one per line, `sft_choices` of them; the answer is the title), "who speaks these lines",
    "continue this speech" and small talk (an everyday question from SMALL_TALK answered with two
    lines of a speech);
  - preference pairs of the kinds in PAIR_KINDS, mixed by `preference_mix`:
      which_play  the 4-choice question; the right title chosen, one of the 3 wrong listed titles rejected
      echo        a "continue this speech" prompt; its true next line chosen, the prompt's last
                  line repeated rejected
      loop        the same prompt; the true next line chosen, its first two words repeated to its
                  length rejected (a repetition loop)
      next_line   the same prompt; the true next line chosen, a line of similar length from
                  another play rejected
      unlisted    the 4-choice question; the right title chosen, a title that is not listed
                  rejected (the answer format: the chatbot's misses are mostly unlisted plays)
      who_speaks  a "who speaks these lines" question; the speaker's name chosen, the speech's
                  next line rejected (the chatbot's miss: it answered verse, not a name)
and from the evaluation scenes the same questions with 4 titles (chance 25%), preference pairs, and
the chat checks (who-speaks and continue-speech turns, plus OUT_OF_DOMAIN questions).
Everything is deterministic given the seed and the DemoConfig.

The pretraining corpus is the plays themselves, so the base model has read the held-out
scenes as plain text; what is held out is the post-training signal (the questions and pairs).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmforge.data.embedded import Play, Scene, Speech, shakespeare_plays
from lmforge.tasks.chat_data import Preference
from lmforge.tasks.config import DemoConfig

# The choices come last, one per line: a title then tokenizes as it does at the start of the reply
# (in "(A / B)" " Henry" is one token, the reply's "Henry" two), so the model can copy it.
WHICH_PLAY = "Which play is this passage from?\n\n{passage}\n\nChoices:\n{choices}"
WHO_SPEAKS = "Who speaks these lines in {title}?\n\n{lines}"
CONTINUE = "Continue this speech by {speaker} in {title}:\n\n{lines}"
# the preference pair kinds, in build order
PAIR_KINDS = ("which_play", "next_line", "echo", "loop", "unlisted", "who_speaks")
# fmt: off
# Questions outside the plays' tasks; the SFT reply is verse from a play, so the chatbot answers
# anything in character instead of with an empty string or a stray "."
SMALL_TALK = (
    "Hello!", "Hi there.", "How are you?", "Who are you?", "What is your name?", "Tell me a story.",
    "What do you think of love?", "Give me some advice.", "What is the weather like today?",
    "Can you help me?", "What should I do tonight?", "Say something wise.", "Are you happy?",
    "What is the meaning of life?", "Tell me about yourself.", "Good morning.", "What is the time?",
    "Do you like music?", "Who is the king?", "What news?",
)
# Everyday questions that no SFT conversation asks: the eval checks that the chatbot answers them
# in verse too (lmforge.tasks.demo_eval.reply_checks)
OUT_OF_DOMAIN = (
    "Hello, who are you?", "What is two plus two?", "Write me a poem about the sea.",
    "What is your favourite food?", "How do I get to the market?", "Do you believe in ghosts?",
    "What do you dream of?", "Why is the sky blue?", "Where do you live?", "Can you keep a secret?",
)
# fmt: on
CHAT_CHECKS = 20  # held-out who-speaks and continue-speech turns in DemoTasks.chat_eval, each


@dataclass
class MCItem:
    """A multiple-choice question: the answer is one of `choices` (as the assistant's reply)."""

    messages: list[dict]  # the conversation up to (not including) the answer
    choices: list[str]
    gold: int


@dataclass
class ChatCheck:
    """A held-out chat turn whose reply is checked for its shape (lmforge.tasks.demo_eval.reply_checks)."""

    messages: list[dict]
    kind: str  # "who_speaks" | "continue" | "out_of_domain"
    answer: str = ""  # who_speaks: the speaker; continue: the speech's true next line
    names: list[str] = field(default_factory=list)  # who_speaks: the play's upper-case speaker names
    # who_speaks: every play's upper-case speaker names (one list shared by the checks): a name
    # from another play is still a character's name, the wrong one
    any_names: list[str] = field(default_factory=list)


@dataclass
class DemoTasks:
    sft: list[list[dict]] = field(default_factory=list)  # conversations (messages lists)
    preference_train: list[Preference] = field(default_factory=list)
    preference_eval: list[Preference] = field(default_factory=list)
    mc_eval: list[MCItem] = field(default_factory=list)
    rl_prompts: list[dict] = field(default_factory=list)  # {"messages", "answer", "choices"}: 4 titles
    titles: list[str] = field(default_factory=list)
    chat_eval: list[ChatCheck] = field(default_factory=list)  # held out by scene, but out_of_domain


_ROMAN = re.compile(r"^(i|ii|iii|iv|v|vi|vii|viii)$")
_SMALL = {"and", "for", "of", "the", "that"}


def play_title(play: Play) -> str:
    """A readable title; some Markdown files carry a section name (EPILOGUE) or the slug instead."""
    title = play.title.strip()
    if title and not title.isupper() and title != play.slug:
        return re.sub(r"Part I$", "Part 1", title)
    words = play.slug.replace("-s-", "'s-").split("-")
    out = [
        w.upper() if _ROMAN.match(w) else w if i and w in _SMALL else w.capitalize()
        for i, w in enumerate(words)
    ]
    return " ".join(out)


def split_scenes(plays: Sequence[Play], fraction: float, seed: int) -> tuple[list, list]:
    """Per play, shuffle its scenes (seeded) and send `fraction` of them (at least one) to eval."""
    rng = random.Random(f"{seed}:split")
    train, held_out = [], []
    for play in plays:
        scenes = [s for s in play.scenes if len(s.speeches) >= 2]
        rng.shuffle(scenes)
        n_eval = max(1, round(fraction * len(scenes)))
        held_out += [(play, s) for s in scenes[:n_eval]]
        train += [(play, s) for s in scenes[n_eval:]]
    return train, held_out


def reward_prompt(item: MCItem) -> dict:
    """A which-play question in the prompt layout GRPO and play_title_reward read."""
    return {"messages": item.messages, "answer": item.choices[item.gold], "choices": item.choices}


def carve_scenes(pairs: list[tuple[Play, Scene]], fraction: float, seed: int) -> tuple[list, list]:
    """(rest, carved): `fraction` of each play's (play, scene) pairs (seeded; at least one of a play
    with two or more) carved out of `pairs`, the order of the rest kept."""
    rng = random.Random(f"{seed}:carve")
    by_play: dict[str, list[int]] = {}
    for i, (play, _) in enumerate(pairs):
        by_play.setdefault(play.slug, []).append(i)
    carved_ids: set[int] = set()
    for ids in by_play.values():
        if len(ids) > 1:
            carved_ids.update(rng.sample(ids, max(1, round(fraction * len(ids)))))
    rest = [p for i, p in enumerate(pairs) if i not in carved_ids]
    return rest, [p for i, p in enumerate(pairs) if i in carved_ids]


def _speech_lines(speech: Speech) -> list[str]:
    return [ln for ln in speech.lines if ln.strip()]


def passage(scene: Scene, rng: random.Random, n_lines: int) -> str | None:
    """`n_lines` verse lines from consecutive speeches, each speech headed "SPEAKER:"."""
    speeches = [s for s in scene.speeches if _speech_lines(s)]
    if not speeches:
        return None
    start = rng.randrange(len(speeches))
    out: list[str] = []
    count = 0
    for sp in speeches[start:]:
        lines = _speech_lines(sp)[: n_lines - count]
        out += [f"{sp.speaker}:", *lines]
        count += len(lines)
        if count >= n_lines:
            break
    return "\n".join(out) if count >= min(2, n_lines) else None


def _which_play(
    play: Play, scene: Scene, titles: list[str], rng: random.Random, n_lines: int, n_choices: int = 4
):
    text = passage(scene, rng, n_lines)
    if text is None:
        return None
    gold = play_title(play)
    choices = rng.sample([t for t in titles if t != gold], n_choices - 1) + [gold]
    rng.shuffle(choices)
    listed = "\n".join(choices)
    return MCItem(
        [{"role": "user", "content": WHICH_PLAY.format(choices=listed, passage=text)}],
        choices,
        choices.index(gold),
    )


def _who_speaks(play: Play, scene: Scene, rng: random.Random):
    speeches = [s for s in scene.speeches if len(_speech_lines(s)) >= 2 and s.speaker.isupper()]
    if not speeches:
        return None
    sp = rng.choice(speeches)
    lines = _speech_lines(sp)[:3]
    question = WHO_SPEAKS.format(title=play_title(play), lines="\n".join(lines))
    return [{"role": "user", "content": question}, {"role": "assistant", "content": sp.speaker}]


def _speech_split(scene: Scene, rng: random.Random, min_lines: int = 3):
    """A speech with at least `min_lines` lines cut after 1..n-1 lines: (speech, shown, next line)."""
    speeches = [s for s in scene.speeches if len(_speech_lines(s)) >= min_lines]
    if not speeches:
        return None
    sp = rng.choice(speeches)
    lines = _speech_lines(sp)
    cut = rng.randrange(2, len(lines))
    return sp, lines[max(0, cut - 4) : cut], lines[cut]


def _continue(play: Play, scene: Scene, rng: random.Random):
    split = _speech_split(scene, rng)
    if split is None:
        return None
    sp, shown, nxt = split
    question = CONTINUE.format(speaker=sp.speaker, title=play_title(play), lines="\n".join(shown))
    return [{"role": "user", "content": question}, {"role": "assistant", "content": nxt}]


def _small_talk(scene: Scene, rng: random.Random):
    """An everyday question answered by the first two lines of a speech (verse, in character)."""
    speeches = [s for s in scene.speeches if len(_speech_lines(s)) >= 2]
    if not speeches:
        return None
    reply = "\n".join(_speech_lines(rng.choice(speeches))[:2])
    return [{"role": "user", "content": rng.choice(SMALL_TALK)}, {"role": "assistant", "content": reply}]


def _line_pool(pairs: list[tuple[Play, Scene]]) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    for play, scene in pairs:
        for sp in scene.speeches:
            pool.setdefault(play.slug, []).extend(ln for ln in _speech_lines(sp) if len(ln) >= 20)
    return pool


def _similar_length(a: str, b: str) -> bool:
    """Within 1/8 (at least 4 characters): summed log-probs favour short texts, so length alone must
    not decide."""
    return abs(len(a) - len(b)) <= max(4, len(a) // 8)


def _continue_prompt(play: Play, scene: Scene, rng: random.Random):
    """A "continue this speech" prompt and its true next line (20+ characters): (messages, shown, next)."""
    split = _speech_split(scene, rng)
    if split is None or len(split[2]) < 20:
        return None
    sp, shown, nxt = split
    question = CONTINUE.format(speaker=sp.speaker, title=play_title(play), lines="\n".join(shown))
    return [{"role": "user", "content": question}], shown, nxt


def _next_line_pair(play: Play, scene: Scene, pool: dict[str, list[str]], rng: random.Random):
    """The true next line chosen, a line of similar length from another play rejected."""
    found = _continue_prompt(play, scene, rng)
    if found is None:
        return None
    messages, _, chosen = found
    others = [slug for slug in pool if slug != play.slug]
    for _ in range(20):
        cand = rng.choice(pool[rng.choice(others)])
        if _similar_length(chosen, cand):
            return Preference(messages, chosen, cand, "next_line")
    return None


def _echo_pair(play: Play, scene: Scene, rng: random.Random):
    """The true next line chosen, the prompt's last line repeated (an echo of the input) rejected."""
    found = _continue_prompt(play, scene, rng)
    if found is None:
        return None
    messages, shown, chosen = found
    if shown[-1] == chosen or not _similar_length(chosen, shown[-1]):
        return None
    return Preference(messages, chosen, shown[-1], "echo")


def _loop_pair(play: Play, scene: Scene, rng: random.Random):
    """The true next line chosen, its first two words repeated to the same length (a loop) rejected."""
    found = _continue_prompt(play, scene, rng)
    if found is None:
        return None
    messages, _, chosen = found
    words = chosen.split()
    if len(words) < 4:
        return None
    head = " ".join(words[:2])
    loop = head
    while len(loop) + len(head) + 1 <= len(chosen):
        loop += " " + head
    return Preference(messages, chosen, loop, "loop")


def _which_play_pair(play: Play, scene: Scene, titles: list[str], rng: random.Random, n_lines: int):
    """The which-play question as the prompt: the right title chosen, a wrong listed one rejected."""
    item = _which_play(play, scene, titles, rng, n_lines)
    if item is None:
        return None
    wrong = rng.choice([c for i, c in enumerate(item.choices) if i != item.gold])
    return Preference(item.messages, item.choices[item.gold], wrong, "which_play")


def _unlisted_pair(play: Play, scene: Scene, titles: list[str], rng: random.Random, n_lines: int):
    """The which-play question as the prompt: the right title chosen, a title not listed rejected;
    half the time one that starts like a listed title ("Henry VI, Part 1" beside "Henry IV, Part 1"
    or "Henry VI, Part 3"), the chatbot's most common miss."""
    item = _which_play(play, scene, titles, rng, n_lines)
    if item is None:
        return None
    unlisted = [t for t in titles if t not in item.choices]
    firsts = {c.split()[0] for c in item.choices}
    near = [t for t in unlisted if t.split()[0] in firsts]
    wrong = rng.choice(near if near and rng.random() < 0.5 else unlisted)
    return Preference(item.messages, item.choices[item.gold], wrong, "unlisted")


def _who_speaks_pair(play: Play, scene: Scene, rng: random.Random):
    """The who-speaks question as the prompt: the speaker chosen, the speech's next line rejected."""
    speeches = [s for s in scene.speeches if len(_speech_lines(s)) >= 3 and s.speaker.isupper()]
    if not speeches:
        return None
    sp = rng.choice(speeches)
    lines = _speech_lines(sp)
    shown = lines[: min(3, len(lines) - 1)]
    question = WHO_SPEAKS.format(title=play_title(play), lines="\n".join(shown))
    return Preference([{"role": "user", "content": question}], sp.speaker, lines[len(shown)], "who_speaks")


def _pair_maker(kind: str, rng: random.Random, pool: dict[str, list[str]], titles: list[str], n_lines: int):
    """make(play, scene) -> a Preference of `kind`, or None when the scene offers none."""
    return {
        "which_play": lambda p, s: _which_play_pair(p, s, titles, rng, n_lines),
        "next_line": lambda p, s: _next_line_pair(p, s, pool, rng),
        "echo": lambda p, s: _echo_pair(p, s, rng),
        "loop": lambda p, s: _loop_pair(p, s, rng),
        "unlisted": lambda p, s: _unlisted_pair(p, s, titles, rng, n_lines),
        "who_speaks": lambda p, s: _who_speaks_pair(p, s, rng),
    }[kind]


def _pairs(
    n: int, mix: dict[str, float], pairs: list[tuple[Play, Scene]], titles: list[str], seed: str, n_lines: int
) -> list[Preference]:
    """`n` preference pairs, round(mix[kind] * n) of each kind (the last kind takes the rounding), shuffled.
    Each kind draws from its own random stream, so a kind's pairs do not depend on the other kinds."""
    pool = _line_pool(pairs)
    out: list[Preference] = []
    kinds = [k for k in PAIR_KINDS if mix.get(k, 0) > 0]
    for i, kind in enumerate(kinds):
        rng = random.Random(f"{seed}:{kind}")
        count = n - len(out) if i == len(kinds) - 1 else round(mix[kind] * n)
        out += _draw(count, pairs, rng, _pair_maker(kind, rng, pool, titles, n_lines))
    random.Random(f"{seed}:shuffle").shuffle(out)
    return out


def _draw(n: int, pairs: list[tuple[Play, Scene]], rng: random.Random, make) -> list:
    """`n` items from `make(play, scene)` on scenes drawn uniformly (a bounded number of tries)."""
    out: list = []
    tries = 0
    while len(out) < n and tries < 20 * n + 100:
        tries += 1
        play, scene = pairs[rng.randrange(len(pairs))]
        item = make(play, scene)
        if item is not None:
            out.append(item)
    return out


def build_demo_tasks(cfg: DemoConfig, seed: int, plays: Sequence[Play] | None = None) -> DemoTasks:
    """All demo data sets, deterministic in (`cfg`, `seed`)."""
    plays = list(plays or shakespeare_plays())
    titles = sorted({play_title(p) for p in plays})
    train, held_out = split_scenes(plays, cfg.eval_scene_fraction, seed)
    rl_scenes: list = []
    if cfg.rl_scene_fraction:
        train, rl_scenes = carve_scenes(train, cfg.rl_scene_fraction, seed)
    rng = random.Random(f"{seed}:demo")
    n = cfg.passage_lines

    def answered(item: MCItem) -> list[dict]:
        return [*item.messages, {"role": "assistant", "content": item.choices[item.gold]}]

    ks = cfg.sft_choices

    def which_item(p: Play, s: Scene) -> MCItem | None:
        lines = rng.choice(cfg.sft_passage_lines) if cfg.sft_passage_lines else n
        return _which_play(p, s, titles, rng, lines, rng.choice(ks) if len(ks) > 1 else ks[0])

    which = _draw(cfg.which_play, train, rng, which_item)
    who = _draw(cfg.who_speaks, train, rng, lambda p, s: _who_speaks(p, s, rng))
    cont = _draw(cfg.continue_speech, train, rng, lambda p, s: _continue(p, s, rng))
    sft = [answered(m) for m in which] + who + cont
    rng.shuffle(sft)
    talk_rng = random.Random(f"{seed}:small-talk")  # its own stream: every other item stays as it was
    for conv in _draw(cfg.small_talk, train, talk_rng, lambda p, s: _small_talk(s, talk_rng)):
        sft.insert(talk_rng.randrange(len(sft) + 1), conv)

    # its own stream: the held-out questions do not change with the training sets' sizes or splits
    eval_rng = random.Random(f"{seed}:held-out questions")
    mc_eval = _draw(cfg.eval_items, held_out, eval_rng, lambda p, s: _which_play(p, s, titles, eval_rng, n))
    pref_train = _pairs(cfg.preference_pairs, cfg.preference_mix, train, titles, f"{seed}:pairs", n)
    pref_eval = _pairs(cfg.eval_items, cfg.preference_mix, held_out, titles, f"{seed}:held-out pairs", n)
    if rl_scenes:
        rl_rng = random.Random(f"{seed}:rl")
        rl_items = _draw(cfg.rl_prompts, rl_scenes, rl_rng, lambda p, s: _which_play(p, s, titles, rl_rng, n))
    else:
        rl_items = [m for m in which if len(m.choices) == 4]
    rl_prompts = [reward_prompt(m) for m in rl_items]
    chat_eval = _chat_checks(held_out, random.Random(f"{seed}:chat-eval"))
    return DemoTasks(sft, pref_train, pref_eval, mc_eval, rl_prompts, titles, chat_eval)


def _chat_checks(held_out: list[tuple[Play, Scene]], rng: random.Random) -> list[ChatCheck]:
    """CHAT_CHECKS who-speaks and continue-speech turns from the held-out scenes, and OUT_OF_DOMAIN
    (its own random stream: the other sets do not depend on it)."""
    speakers: dict[str, list[str]] = {}
    for play, _ in held_out:
        if play.slug not in speakers:
            names = {sp.speaker for sc in play.scenes for sp in sc.speeches if sp.speaker.isupper()}
            speakers[play.slug] = sorted(names)
    everyone = sorted({name for names in speakers.values() for name in names})

    def who(play: Play, scene: Scene) -> ChatCheck | None:
        conv = _who_speaks(play, scene, rng)
        if conv is None:
            return None
        return ChatCheck(conv[:1], "who_speaks", conv[1]["content"], speakers[play.slug], everyone)

    def cont(play: Play, scene: Scene) -> ChatCheck | None:
        conv = _continue(play, scene, rng)
        return None if conv is None else ChatCheck(conv[:1], "continue", conv[1]["content"])

    ood = [ChatCheck([{"role": "user", "content": q}], "out_of_domain") for q in OUT_OF_DOMAIN]
    return _draw(CHAT_CHECKS, held_out, rng, who) + _draw(CHAT_CHECKS, held_out, rng, cont) + ood


# play_title_reward for a listed title that is not the answer: at 0.2 GRPO gave the answer format
# too little weight beside the right title's 1 (listed-title replies 92% after it, 95% at 0.5)
LISTED_CREDIT = 0.5


def play_title_reward(
    prompts: list[str],
    completions: list[str],
    answer: list[str],
    choices: list[list[str]] | None = None,
    **_: object,
) -> list[float]:
    """The demo RL reward: 1 when the completion is the right title (surrounding whitespace ignored),
    LISTED_CREDIT when it is another of the question's listed `choices` (the answer format, without
    which a model that names unlisted plays gets no signal), else 0."""
    listed = choices or [[] for _ in completions]
    return [
        1.0 if c.strip() == a.strip() else LISTED_CREDIT if c.strip() in ch else 0.0
        for c, a, ch in zip(completions, answer, listed)
    ]
