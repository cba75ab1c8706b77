import pandas as pd

from assets.instruction_pairs import build_pairs, content_hash, split_of
from data_checks.pair_checks import train_eval_disjoint


def conversation(i):
    return [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": f"Triage.\n\nTicket number {i}"},
        {"role": "assistant", "content": f"answer {i}"},
    ]


def validated(n, start=0):
    return pd.DataFrame(
        {
            "kind": ["sft"] * n,
            "messages": [conversation(i) for i in range(start, start + n)],
            "chosen": [None] * n,
            "rejected": [None] * n,
            "n_tokens": [20] * n,
            "drop": ["d1"] * n,
            "source_file": ["d1/t.jsonl"] * n,
            "source_line": list(range(1, n + 1)),
        }
    )


def test_split_is_deterministic_and_near_the_requested_fraction():
    first = build_pairs(validated(2000), 0.15)
    again = build_pairs(validated(2000).sample(frac=1.0, random_state=3), 0.15)
    by_id = dict(zip(again["example_id"], again["split"]))
    assert all(by_id[i] == s for i, s in zip(first["example_id"], first["split"]))
    assert 0.12 < (first["split"] == "eval").mean() < 0.18


def test_examples_keep_their_side_when_new_data_arrives():
    before = build_pairs(validated(300), 0.2)
    after = build_pairs(pd.concat([validated(300), validated(300, start=300)]), 0.2)
    old = after.head(300)
    assert old["split"].tolist() == before["split"].tolist()


def test_salt_changes_the_split():
    assert [split_of(str(i), 0.5) for i in range(50)] != [split_of(str(i), 0.5, "x") for i in range(50)]


def test_pairs_are_chat_messages_with_their_source():
    pairs = build_pairs(validated(3), 0.5)
    assert pairs.loc[0, "messages"] == [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": "Triage.\n\nTicket number 0"},
        {"role": "assistant", "content": "answer 0"},
    ]
    assert pairs.loc[2, "source_line"] == 3 and pairs.loc[2, "drop"] == "d1"


def test_content_hash_names_the_set_not_its_order():
    pairs = build_pairs(validated(20), 0.2)
    assert content_hash(pairs) == content_hash(pairs.iloc[::-1])
    assert content_hash(pairs) != content_hash(pairs.head(19))


def test_disjoint_check_passes_on_a_real_split_and_fails_on_a_leak():
    pairs = build_pairs(validated(200), 0.2)
    assert train_eval_disjoint(pairs).passed

    leak = pairs.copy()
    first_eval = leak.index[leak["split"] == "eval"][0]
    train_row = leak[leak["split"] == "train"].iloc[0]
    messages = [dict(m) for m in train_row["messages"]]
    messages[1]["content"] = "  " + messages[1]["content"].upper()
    leak.at[first_eval, "messages"] = messages
    result = train_eval_disjoint(leak)
    assert not result.passed
    assert result.metadata["shared_normalized"].value == 1
    assert result.metadata["shared_exact"].value == 0
