import random

import pandas as pd

from assets.instruction_pairs import (
    PAIRS_SCHEMA,
    PairTally,
    SetHash,
    build_pairs,
    mark_cross_drop_duplicates,
    split_of,
)
from data_checks.pair_checks import train_eval_disjoint
from resources.records import FirstSeen, RecordWriter
from resources.state import StateStore


def conversation(i):
    return [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": f"Triage.\n\nTicket number {i}"},
        {"role": "assistant", "content": f"answer {i}"},
    ]


def validated(n, start=0, drop="d1"):
    return [
        {
            "kind": "sft",
            "messages": conversation(i),
            "chosen": None,
            "rejected": None,
            "n_tokens": 20,
            "drop": drop,
            "source_file": f"{drop}/t.jsonl",
            "source_line": i - start + 1,
        }
        for i in range(start, start + n)
    ]


def pairs_of(rows, eval_fraction):
    return pd.DataFrame(build_pairs(rows, eval_fraction))


def record_set(folder, pairs: pd.DataFrame):
    with RecordWriter(folder / "pairs.parquet", PAIRS_SCHEMA) as out:
        out.write(pairs.to_dict("records"))
    return out.record_set()


def test_split_is_deterministic_and_near_the_requested_fraction():
    first = pairs_of(validated(2000), 0.15)
    again = pairs_of(random.Random(3).sample(validated(2000), 2000), 0.15)
    by_id = dict(zip(again["example_id"], again["split"]))
    assert all(by_id[i] == s for i, s in zip(first["example_id"], first["split"]))
    assert 0.12 < (first["split"] == "eval").mean() < 0.18


def test_examples_keep_their_side_when_new_data_arrives():
    before = pairs_of(validated(300), 0.2)
    after = pairs_of(validated(300) + validated(300, start=300), 0.2)
    old = after.head(300)
    assert old["split"].tolist() == before["split"].tolist()


def test_salt_changes_the_split():
    assert [split_of(str(i), 0.5) for i in range(50)] != [split_of(str(i), 0.5, "x") for i in range(50)]


def test_pairs_are_chat_messages_with_their_source():
    pairs = pairs_of(validated(3), 0.5)
    assert pairs.loc[0, "messages"] == [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": "Triage.\n\nTicket number 0"},
        {"role": "assistant", "content": "answer 0"},
    ]
    assert pairs.loc[2, "source_line"] == 3 and pairs.loc[2, "drop"] == "d1"


def set_hash(pairs) -> str:
    digest = SetHash()
    for p in pairs:
        digest.add(p["example_id"], p["messages"])
    return digest.hexdigest()


def test_set_hash_names_the_set_not_its_order():
    pairs = build_pairs(validated(20), 0.2)
    assert set_hash(pairs) == set_hash(pairs[::-1])
    assert set_hash(pairs) != set_hash(pairs[:19])


def test_streamed_set_hashes_equal_the_hash_of_the_whole_split():
    pairs = build_pairs(validated(50), 0.2)
    tally = PairTally()
    for start in range(0, 50, 7):
        tally.add(pairs[start : start + 7])
    assert tally.train_hash.hexdigest() == set_hash([p for p in pairs if p["split"] == "train"])
    assert tally.eval_hash.hexdigest() == set_hash([p for p in pairs if p["split"] == "eval"])
    assert tally.train + tally.eval == 50


def test_repeats_of_an_earlier_drop_are_excluded_across_batches(tmp_path):
    seen = FirstSeen(tmp_path / "seen.sqlite")
    first = build_pairs(validated(5, drop="d1"), 0.2)
    mark_cross_drop_duplicates(first, seen)
    repeat = validated(3, start=3, drop="d2")
    repeat[0]["messages"] = [dict(m) for m in repeat[0]["messages"]]
    repeat[0]["messages"][1]["content"] = "  TRIAGE.\n\nticket number 3 "
    later = build_pairs(repeat, 0.2)
    mark_cross_drop_duplicates(later, seen)
    assert all(p["excluded_reason"] is None for p in first)
    assert [p["excluded_reason"] for p in later] == [
        "duplicate of d1/t.jsonl:4 from an earlier drop",
        "duplicate of d1/t.jsonl:5 from an earlier drop",
        None,
    ]
    assert [p["split"] for p in later[:2]] == ["excluded", "excluded"]


def test_disjoint_check_passes_on_a_real_split_and_fails_on_a_leak(tmp_path):
    pairs = pairs_of(validated(200), 0.2)
    state = StateStore(home=str(tmp_path))
    assert train_eval_disjoint(record_set(tmp_path, pairs), state).passed

    leak = pairs.copy()
    first_eval = leak.index[leak["split"] == "eval"][0]
    train_row = leak[leak["split"] == "train"].iloc[0]
    messages = [dict(m) for m in train_row["messages"]]
    messages[1]["content"] = "  " + messages[1]["content"].upper()
    leak.at[first_eval, "messages"] = messages
    result = train_eval_disjoint(record_set(tmp_path, leak), state)
    assert not result.passed
    assert result.metadata["shared_normalized"].value == 1
    assert result.metadata["shared_exact"].value == 0
