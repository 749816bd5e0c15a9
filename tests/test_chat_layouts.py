"""Chat and preference data in every accepted layout, from JSONL, Parquet and a local `hf:` dataset."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks.chat_data import load_conversations, load_preferences

WANT = [{"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "Shakespeare."}]
SYSTEM = {"role": "system", "content": "Be brief."}

CONVERSATION_RECORDS = {
    "messages": {"messages": WANT},
    "sharegpt": {"conversations": [{"from": "human", "value": "Who wrote Hamlet?"},
                                   {"from": "gpt", "value": "Shakespeare."}]},
    "alpaca": {"instruction": "Who wrote Hamlet?", "input": "", "output": "Shakespeare."},
    "prompt_completion": {"prompt": "Who wrote Hamlet?", "completion": "Shakespeare."},
    "prompt_completion_messages": {"prompt": [WANT[0]], "completion": [WANT[1]]},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("layout", sorted(CONVERSATION_RECORDS))
def test_each_conversation_layout_reads_as_messages(tmp_path, layout):
    path = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION_RECORDS[layout]])
    assert load_conversations([path]) == [WANT]


def test_sharegpt_system_turn_and_parquet(tmp_path):
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Who wrote Hamlet?"},
             {"from": "gpt", "value": "Shakespeare."}]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": turns, "id": 1}]), path)
    assert load_conversations([str(path)]) == [[SYSTEM, *WANT]]


def test_hf_dataset_from_a_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [CONVERSATION_RECORDS["sharegpt"], CONVERSATION_RECORDS["messages"]])
    assert load_conversations([f"hf:{folder}"]) == [WANT, WANT]


def test_unknown_layout_names_the_keys_and_the_layouts(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(LmforgeError) as err:
        load_conversations([path])
    text = str(err.value)
    assert "chat.jsonl:1" in text and "['answer', 'question']" in text
    assert "ShareGPT" in text and "Alpaca" in text and "prompt, completion" in text
    bad_turn = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(LmforgeError, match="turn 0"):
        load_conversations([bad_turn])


PROMPT = [{"role": "user", "content": "Best play?"}]


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Best play?", "chosen": "Hamlet", "rejected": "Cats"},
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "Hamlet"}],
         "rejected": [{"role": "assistant", "content": "Cats"}]},
        {"chosen": [*PROMPT, {"role": "assistant", "content": "Hamlet"}],
         "rejected": [*PROMPT, {"role": "assistant", "content": "Cats"}]},
    ],
    ids=["strings", "messages", "implicit_prompt_messages"],
)
def test_trl_preference_layouts(tmp_path, record):
    (pair,) = load_preferences([write_jsonl(tmp_path / "pref.jsonl", [record])])
    assert (pair.messages, pair.chosen, pair.rejected) == (PROMPT, "Hamlet", "Cats")


def test_implicit_prompt_of_strings_is_the_common_prefix_and_parquet_works(tmp_path):
    path = tmp_path / "pref.parquet"
    row = {"chosen": "Q: Best play? A: Hamlet", "rejected": "Q: Best play? A: Cats"}
    pq.write_table(pa.Table.from_pylist([row]), path)
    (pair,) = load_preferences([str(path)])
    assert pair.messages == [{"role": "user", "content": "Q: Best play? A: "}]
    assert (pair.chosen, pair.rejected) == ("Hamlet", "Cats")


def test_preference_without_chosen_is_refused_with_keys(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "x", "good": "a", "bad": "b"}])
    with pytest.raises(LmforgeError, match=r"\['bad', 'good', 'prompt'\].*chosen, rejected"):
        load_preferences([path])
