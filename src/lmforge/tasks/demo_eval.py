"""The held-out demo measurements printed before and after each post-training stage.

  which_play_acc   4-choice "which play is this passage from" (chance 25%): the choice whose
                   reply (title + <|end|>) has the highest summed log-probability after the
                   chat-rendered question wins
  preference_acc   held-out pairs whose chosen completion has a higher summed log-probability
                   than the rejected one (both + <|end|>, after the same prompt); with mixed
                   pair kinds also preference_acc/KIND for each kind
Scoring is lmforge.inference.scoring.token_loglikelihoods (the one scorer) on pre-tokenized requests.
What a user sees is measured by generation instead (`which_play_answers`): the greedy reply to each
held-out question, which must be one of the listed titles (format) and the right one (accuracy);
with the demo's titles also how often it is a play title at all, listed or not (title);
`reply_checks` checks the shape of the other replies: a who-speaks question gets an upper-case
speaker name of that play, "continue this speech" and an everyday question get verse (`is_verse`).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.tasks.chat_data import Preference
from lmforge.tasks.demo import ChatCheck, MCItem


def _reply(tokenizer, text: str) -> list[int]:
    return tokenizer.encode_ordinary(text) + [tokenizer.special_ids["<|end|>"]]


def _prompt(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.render_chat(messages, add_generation_prompt=True)[0]


def which_play_accuracy(model, tokenizer, items: list[MCItem], batch_size: int = 32) -> float:
    from lmforge.inference.scoring import token_loglikelihoods

    requests = []
    for item in items:
        ctx = _prompt(tokenizer, item.messages)
        requests += [(ctx, _reply(tokenizer, c)) for c in item.choices]
    scores = token_loglikelihoods(model, requests, batch_size)
    hits, k = 0, 0
    for item in items:
        lls = [ll for ll, _ in scores[k : k + len(item.choices)]]
        k += len(item.choices)
        hits += int(max(range(len(lls)), key=lls.__getitem__) == item.gold)
    return hits / max(1, len(items))


def preference_hits(model, tokenizer, pairs: list[Preference], batch_size: int = 32) -> list[bool]:
    """Per pair: is the chosen completion more likely than the rejected one."""
    from lmforge.inference.scoring import token_loglikelihoods

    requests = []
    for p in pairs:
        ctx = _prompt(tokenizer, p.messages)
        requests += [(ctx, _reply(tokenizer, p.chosen)), (ctx, _reply(tokenizer, p.rejected))]
    scores = token_loglikelihoods(model, requests, batch_size)
    return [scores[2 * i][0] > scores[2 * i + 1][0] for i in range(len(pairs))]


def demo_metrics(model, tokenizer, mc_items: list[MCItem], pairs: list[Preference]) -> dict[str, float]:
    """which_play_acc, preference_acc, and preference_acc/KIND per pair kind when the pairs mix kinds."""
    hits = preference_hits(model, tokenizer, pairs)
    out = {
        "which_play_acc": which_play_accuracy(model, tokenizer, mc_items),
        "preference_acc": sum(hits) / max(1, len(hits)),
    }
    kinds = sorted({p.kind for p in pairs})
    if len(kinds) > 1:
        for kind in kinds:
            of_kind = [h for h, p in zip(hits, pairs) if p.kind == kind]
            out[f"preference_acc/{kind}"] = sum(of_kind) / len(of_kind)
    return out


def format_metrics(label: str, m: dict[str, float], n_mc: int, n_pairs: int) -> str:
    by_kind = ", ".join(
        f"{k.split('/', 1)[1]} {100 * v:.1f}%" for k, v in m.items() if k.startswith("preference_acc/")
    )
    return (
        f"[lmforge] {label}: held-out which-play accuracy {100 * m['which_play_acc']:.1f}% "
        f"({n_mc} questions, chance 25%), held-out preference accuracy {100 * m['preference_acc']:.1f}% "
        f"({n_pairs} pairs{'; ' + by_kind if by_kind else ''})"
    )


def chat_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 24) -> list[str]:
    """Greedy (temperature 0) assistant replies to each conversation, stopped at <|end|>: what
    `lmforge chat` and the server give at temperature 0."""
    from lmforge.inference import Engine, SamplingParams

    prompts = [tokenizer.render_chat(m, add_generation_prompt=True)[0] for m in conversations]
    end = tokenizer.special_ids["<|end|>"]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=[end])
    return [c.text for c in Engine(model, tokenizer).generate(prompts, params)]


def which_play_answers(
    model, tokenizer, items: list[MCItem], max_new_tokens: int = 24, titles: Sequence[str] = ()
) -> dict:
    """Generated answers to the which-play questions: format = the reply is one of the listed
    titles (surrounding whitespace ignored), accuracy = it is the right one, and with `titles`
    (every play's) title = it is a play title, listed or not; plus the replies."""
    replies = chat_replies(model, tokenizer, [i.messages for i in items], max_new_tokens)
    listed = [r.strip() in i.choices for r, i in zip(replies, items)]
    right = [r.strip() == i.choices[i.gold] for r, i in zip(replies, items)]
    n = max(1, len(items))
    out = {"format": sum(listed) / n, "accuracy": sum(right) / n, "replies": replies}
    if titles:
        known = set(titles)
        out["title"] = sum(r.strip() in known for r in replies) / n
    return out


def is_verse(reply: str) -> bool:
    """The reply's first non-empty line has at least 3 words: a line of verse, not an empty string,
    a stray "." or a fragment."""
    lines = [ln for ln in reply.splitlines() if ln.strip()]
    return bool(lines) and len(lines[0].split()) >= 3


def reply_checks(model, tokenizer, checks: list[ChatCheck], max_new_tokens: int = 32) -> dict:
    """Greedy replies to the held-out chat checks (lmforge.tasks.demo.ChatCheck), per kind the
    fraction in shape: who_speaks_name (a speaker name of any play), who_speaks_format (of the
    play asked about) and who_speaks_acc (the right one), continue_format and out_of_domain_format
    (`is_verse`); plus the replies."""
    replies = chat_replies(model, tokenizer, [c.messages for c in checks], max_new_tokens)
    ok: dict[str, list[bool]] = {}
    right: list[bool] = []
    named: list[bool] = []
    for check, reply in zip(checks, replies):
        if check.kind == "who_speaks":
            ok.setdefault("who_speaks", []).append(reply.strip() in check.names)
            right.append(reply.strip() == check.answer)
            named.append(reply.strip() in (check.any_names or check.names))
        else:
            ok.setdefault(check.kind, []).append(is_verse(reply))
    out: dict = {f"{kind}_format": sum(v) / len(v) for kind, v in ok.items()}
    if right:
        out["who_speaks_acc"] = sum(right) / len(right)
        out["who_speaks_name"] = sum(named) / len(named)
    out["replies"] = replies
    return out
