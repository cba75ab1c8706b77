import random
import re
from collections import Counter

import pandas as pd
import pyarrow as pa
import pytest

from assets.domain.chat import prompt_hash
from assets.instruction_pairs import (
    PAIRS_SCHEMA,
    LengthTally,
    PairTally,
    SetHash,
    SplitConfig,
    build_pairs,
    drops_to_use,
    mark_cross_drop_duplicates,
    split_of,
    write_pairs,
)
from data_checks.pair_checks import train_eval_disjoint
from resources.records import MESSAGES, FirstSeen, RecordWriter
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


# ---- preference pairs, tiny landings, and why there is nothing to train on -----------------------


def preference_rows(prompts, drop="d1"):
    return [
        {
            "kind": "preference",
            "messages": [{"role": "system", "content": "Be precise."}, {"role": "user", "content": prompt}],
            "chosen": f"right {i}",
            "rejected": f"wrong {i}",
            "tools": None,
            "n_tokens": 20,
            "drop": drop,
            "source_file": f"{drop}/p.jsonl",
            "source_line": i + 1,
            "gx_result": None,
        }
        for i, prompt in enumerate(prompts)
    ]


VALIDATED_COLUMNS = pa.schema(
    [
        ("kind", pa.string()),
        ("messages", MESSAGES),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("tools", pa.string()),
        ("n_tokens", pa.int64()),
        ("drop", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("gx_result", pa.string()),
    ]
)


def validated_set(folder, rows, name="d1"):
    with RecordWriter(folder / f"{name}.parquet", VALIDATED_COLUMNS, ("tools",)) as out:
        out.write(rows)
    return out.record_set(partition=name)


def written(tmp_path, rows, eval_fraction=0.15, cause=""):
    drops = [("d1", validated_set(tmp_path, rows))]
    out, tally, note = write_pairs(
        drops, SplitConfig(eval_fraction=eval_fraction), tmp_path / "pairs.parquet", tmp_path, cause
    )
    return out.record_set(), tally, note


def test_preference_pairs_are_split_by_prompt_and_named_in_both_set_hashes():
    pairs = build_pairs(preference_rows([f"Pick {i}" for i in range(200)]), 0.2)
    tally = PairTally()
    tally.add(pairs)
    sides = Counter(p["split"] for p in pairs)
    assert (tally.preference_train, tally.preference_eval) == (sides["train"], sides["eval"])
    assert 0 < sides["eval"] < sides["train"] and tally.train == tally.eval == 0
    assert tally.train_hash.hexdigest() != PairTally().train_hash.hexdigest(), "the pairs trained on are named"


def test_a_landing_of_three_pairs_keeps_one_to_train_on_and_holds_one_out(tmp_path):
    # these three prompts all hash to train at 15%: the smallest hash moves to eval
    prompts = ["Which is right, 1 or 2?", "Pick the better answer.", "Choose one."]
    assert {split_of(p["example_id"], 0.15) for p in build_pairs(preference_rows(prompts), 0.15)} == {"train"}
    pairs, tally, note = written(tmp_path, preference_rows(prompts))
    frame = pairs.frame()
    assert sorted(frame["split"]) == ["eval", "train", "train"]
    assert (tally.preference_train, tally.preference_eval) == (2, 1)
    moved_id = frame.loc[frame["split"] == "eval", "example_id"].item()
    assert moved_id == min(frame["example_id"]), "the prompt with the smallest hash"
    assert note == "the prompt hash put every example in train; the prompt with the smallest hash moved to eval"
    assert train_eval_disjoint(pairs, StateStore(home=str(tmp_path))).passed


def test_rows_sharing_a_prompt_move_together(tmp_path):
    prompts = ["Which is right, 1 or 2?", "Pick the better answer.", "Choose one."]
    first = min(prompts, key=lambda p: prompt_hash(preference_rows([p])[0]["messages"]))
    pairs = written(tmp_path, preference_rows([*prompts, first]))[0]
    frame = pairs.frame()
    assert frame.loc[frame["split"] == "eval", "source_line"].tolist() == [prompts.index(first) + 1, 4]
    assert train_eval_disjoint(pairs, StateStore(home=str(tmp_path))).passed


def test_a_split_with_sft_examples_on_both_sides_is_left_as_the_hash_made_it(tmp_path):
    pairs, tally, note = written(tmp_path, [{**r, "tools": None, "gx_result": None} for r in validated(100)])
    assert note == "" and tally.eval and tally.train


def test_a_single_prompt_cannot_be_split_and_says_why(tmp_path):
    with pytest.raises(ValueError, match=r"^Only one prompt to learn from \(1 example\): nothing can be held out"):
        written(tmp_path, preference_rows(["Pick one."]))


def test_nothing_to_train_on_names_what_validation_left_out(tmp_path):
    cause = (
        "Drop d1: passed, nothing to train on: all 86 rows left out: the final answer alone is longer than "
        "max_tokens=64."
    )
    with pytest.raises(ValueError) as raised:
        written(tmp_path, [], cause=cause)
    assert str(raised.value) == f"Nothing to train on: the drops that passed validation hold no rows. {cause}"
    assert "SFT examples" not in str(raised.value)


def test_no_drop_passed_names_each_held_back_drop():
    status = "held back: failed the quality gate: 4 of 4 rows rejected as bad data (chat structure broken (4))"
    with pytest.raises(ValueError, match=f"nothing to train on. Drop d2: {re.escape(status)}."):
        drops_to_use({"d2": None}, statuses={"d2": status})


def test_length_figures_of_the_drops_used_add_up_with_their_reasons():
    metadata = {
        "d1": {"rows_truncated": 2, "truncations": {"last user turn cut": 2}, "rows_left_out": 0},
        "d2": {
            "rows_truncated": 1,
            "truncations": {"earlier turns dropped": 1},
            "rows_left_out": 3,
            "left_out_reason": "the final answer alone is longer than max_tokens=2048",
        },
        "d3": None,
        "d4": {"rows_truncated": 9},
    }
    lengths = LengthTally.of(metadata, ["d1", "d2", "d3"])
    assert (lengths.truncated, lengths.left_out) == (3, 3)
    assert lengths.reasons == {
        "left out: the final answer alone is longer than max_tokens=2048": 3,
        "cut to fit: last user turn cut": 2,
        "cut to fit: earlier turns dropped": 1,
    }
