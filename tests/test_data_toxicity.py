"""The toxicity step: worst-passage scoring with the shipped classifier, its threshold, and its measured
precision and recall on a small labelled set built here (the figures in docs/data.md)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lmforge.data.documents import Document
from lmforge.data.toxicity import ToxicityConfig, ToxicityStep, scoring_units, worst_passage
from lmforge.errors import LmforgeError

# Comments of the kind a crawl holds: abusive ones, and clean ones that include hard cases
# (insults without profanity words, "ass" the animal, violent words in harmless senses, Shakespeare).
TOXIC = [
    "You are a complete idiot and nobody wants to read your stupid comments.",
    "Shut the fuck up, you worthless piece of shit.",
    "Go to hell, you pathetic bastard.",
    "What a dumb ass post, the author is an ignorant fool.",
    "Fuck you and everyone who agrees with you.",
    "Nobody cares what you think, you miserable little shit.",
    "Your opinion is bullshit and so are you.",
    "Stop posting crap, you annoying dickhead.",
    "You stupid bitch, learn to read before you comment.",
    "This thread is full of morons and assholes like you.",
    "Piss off and never come back, loser.",
    "I hope you choke on your own words, you disgusting pig.",
    "What the hell is wrong with you, are you really this dumb?",
    "Only a brainless jerk would write something this stupid.",
    "Get lost, you ugly fat slob.",
    "The referee is a blind moron who should be fired.",
    "Damn, you are the dumbest person on the internet.",
    "Shove your stupid theory up your ass.",
    "Those clowns in the council are useless idiots.",
    "Screw you, this is the worst garbage I have read.",
]
CLEAN = [
    "The river flooded the valley every spring, bringing fertile soil to the farms.",
    "Thanks for the detailed answer, it fixed my build.",
    "The donkey, or ass, has been used as a working animal for thousands of years.",
    "Kill the process with its id, then start the service again.",
    "The recipe needs two cups of flour and a pinch of salt.",
    "I disagree with the author's conclusion, but the data section is solid.",
    "Our team shot the documentary in Scunthorpe last winter.",
    "The cocktail bar on the corner serves excellent mocktails too.",
    "She assessed the damage after the storm and called the insurer.",
    "The museum reopens on Monday with a new exhibition on ancient Egypt.",
    "This patch breaks the tests on Windows; could you take another look?",
    "Thou art a boil, a plague sore, an embossed carbuncle in my corrupted blood.",
    "The committee will vote on the budget next week.",
    "He scored twice in the second half and the crowd went wild.",
    "Please remember to water the plants while I am away.",
    "The bridge was closed for repairs for most of the summer.",
    "A dead battery is the most common reason a car will not start.",
    "The hens laid eight eggs this morning.",
    "Our cat hates the vacuum cleaner and hides under the bed.",
    "The lecture covers sorting algorithms and their running times.",
]


@pytest.fixture(scope="module")
def step():
    pytest.importorskip("profanity_check")
    return ToxicityStep(ToxicityConfig())


def test_precision_and_recall_on_a_labelled_set(step):
    scores = np.array([step.score(t) for t in TOXIC + CLEAN])
    labels = np.array([1] * len(TOXIC) + [0] * len(CLEAN))
    flagged = scores > step.cfg.threshold
    tp = int((flagged & (labels == 1)).sum())
    precision, recall = tp / max(1, flagged.sum()), tp / len(TOXIC)
    print(f"toxicity threshold {step.cfg.threshold}: precision {precision:.3f} recall {recall:.3f}")
    # measured: 0.950 and 0.950 (docs/data.md); the miss is the profanity-free "blind moron" line,
    # the false alarm "the donkey, or ass": the model scores words, not their sense
    assert precision >= 0.9 and recall >= 0.9
    assert step(Document("t", TOXIC[1])) == "toxic"
    kept = step(Document("c", CLEAN[0]))
    assert isinstance(kept, Document) and kept.metadata["toxicity_score"] < 0.9


def test_a_document_is_scored_by_its_worst_passage(step):
    clean = " ".join(CLEAN)  # one long line: cut into sentences
    assert len(scoring_units(clean)) == len(CLEAN)
    rant = "\n".join(TOXIC[:5])
    mixed = "\n".join(CLEAN[:10]) + "\n" + rant + "\n" + "\n".join(CLEAN[10:])
    assert step.score(mixed) > 0.9  # five abusive lines in a row are one bad passage
    one_insult = "\n".join(CLEAN[:10] + [TOXIC[1]] + CLEAN[10:])
    assert step.score(one_insult) < 0.5  # one line among clean ones is diluted by its window
    assert isinstance(ToxicityStep(ToxicityConfig(window=5))(Document("m", one_insult)), Document)
    assert ToxicityStep(ToxicityConfig(window=1))(Document("m", one_insult)) == "toxic"
    assert worst_passage(np.array([0.1, 0.9, 0.9, 0.1]), 2) == pytest.approx(0.9)
    assert worst_passage(np.array([0.2, 0.4]), 5) == pytest.approx(0.3)
    assert worst_passage(np.empty(0), 5) == 0.0


def test_threshold_is_a_setting(step):
    text = TOXIC[0]
    score = step.score(text)
    assert ToxicityStep(ToxicityConfig(threshold=min(1.0, score + 0.01)))(Document("a", text)) != "toxic"
    assert ToxicityStep(ToxicityConfig(threshold=score - 0.01))(Document("a", text)) == "toxic"
    with pytest.raises(LmforgeError, match="threshold"):
        ToxicityStep(ToxicityConfig(threshold=1.5))


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)
    with pytest.raises(LmforgeError, match=r"lmforge\[toxicity\]"):
        ToxicityStep(ToxicityConfig())
