"""Mixing weights (`split.mixing`, assets/domain/mixture.py): how often each train row is sampled, the
rules' validation, what instruction_pairs records and shows, what the training stages train on, and
what the registered version states."""

from collections import Counter
from dataclasses import replace

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from assets.domain.lineage import DataCounts, model_card
from assets.domain.mixture import MixingRule, mixed, mixing_hash, mixture_table, row_weights
from assets.domain.training import TrainingConfig
from assets.domain.values import PairsSummary
from assets.fine_tuned_model import sft_examples
from assets.instruction_pairs import PAIRS_SCHEMA, SplitConfig, instruction_pairs, write_pairs
from assets.preference_tuned_model import dpo_recipe
from resources.records import MESSAGES, RecordWriter
from resources.state import StateStore
from tests.test_metrics_and_gate import lineage

DROPS = ("2025-12-01", "2026-01-05", "2026-02-02")
FORMATS = ("openai_chat", "sharegpt", "dolly")


def rows(n: int) -> pd.DataFrame:
    """`n` train rows spread over three drops, files and formats."""
    return pd.DataFrame(
        {
            "example_id": [f"id{i:05d}" for i in range(n)],
            "drop": [DROPS[i % 3] for i in range(n)],
            "source_file": [f"{DROPS[i % 3]}/{('support', 'chat', 'misc')[i % 3]}.jsonl" for i in range(n)],
            "source_line": [i // 3 + 1 for i in range(n)],
            "format": [FORMATS[i % 3] for i in range(n)],
        }
    )


def times_sampled(frame: pd.DataFrame) -> Counter:
    return Counter(frame["example_id"])


def test_weight_two_trains_each_row_of_its_group_exactly_twice():
    train = rows(300)
    out = mixed(train, [{"drop": "2026-01-*", "weight": 2.0}], seed=0)
    counts = times_sampled(out)
    assert len(out) == 400
    assert {counts[i] for i in train.loc[train["drop"] == "2026-01-05", "example_id"]} == {2}
    assert {counts[i] for i in train.loc[train["drop"] != "2026-01-05", "example_id"]} == {1}


def test_weight_half_samples_about_half_the_same_way_for_a_seed_in_any_row_order():
    train = rows(3000)
    rules = [MixingRule(source_file="*support*.jsonl", weight=0.5)]
    support = train["source_file"].str.contains("support")
    out = mixed(train, rules, seed=7)
    kept = out["example_id"].isin(train.loc[support, "example_id"]).sum()
    assert 0.45 * support.sum() < kept < 0.55 * support.sum(), kept
    assert len(out) - kept == (~support).sum(), "rows no rule matches train once"
    assert times_sampled(mixed(train, rules, seed=7)) == times_sampled(out), "deterministic for a seed"
    shuffled = train.sample(frac=1.0, random_state=1)
    assert times_sampled(mixed(shuffled, rules, seed=7)) == times_sampled(out), "stable under row order"
    assert times_sampled(mixed(train, rules, seed=8)) != times_sampled(out), "another seed, another sample"


def test_a_fractional_weight_above_one_adds_a_copy_with_its_fraction():
    train = rows(3000)
    out = times_sampled(mixed(train, [{"format": "sharegpt", "weight": 1.5}], seed=0))
    sharegpt = train.loc[train["format"] == "sharegpt", "example_id"]
    assert {out[i] for i in sharegpt} == {1, 2}
    assert 0.45 < sum(out[i] == 2 for i in sharegpt) / len(sharegpt) < 0.55


def test_a_row_matching_several_rules_gets_the_product_of_their_weights():
    train = rows(6)
    rules = [{"drop": "2026-*", "weight": 2.0}, {"format": "sharegpt", "weight": 1.5}, {"format": "dolly", "weight": 0}]
    assert row_weights(train, rules).tolist() == [1.0, 3.0, 0.0, 1.0, 3.0, 0.0]
    assert times_sampled(mixed(train, rules, seed=0)) == {"id00000": 1, "id00001": 3, "id00003": 1, "id00004": 3}


def test_weight_zero_leaves_rows_out_of_training_and_zeroing_every_row_is_refused():
    train = rows(9)
    out = mixed(train, [{"format": "dolly", "weight": 0.0}], seed=0)
    assert "dolly" not in set(out["format"]) and len(out) == 6
    with pytest.raises(ValueError, match=r"samples none of the 9 train rows \(drop=\*: weight 0\)"):
        mixed(train, [{"drop": "*", "weight": 0}], seed=0)


def test_no_rules_change_nothing():
    train = rows(30)
    assert mixed(train, [], seed=0) is train and mixed(train, (), seed=3) is train
    assert mixing_hash([]) == ""
    summary = PairsSummary(30, 5, 0, 0, ("d1",), {}, "train-hash", "eval-hash")
    assert summary.train_data_key == "train-hash", "without rules, the setup key's data is the train set hash"


def test_the_rules_hash_names_the_rules_in_any_order():
    a, b = {"drop": "2026-*", "weight": 2.0}, {"format": "dolly", "weight": 0.5}
    assert mixing_hash([a, b]) == mixing_hash([b, a]) != mixing_hash([a]) != ""
    assert mixing_hash([a]) != mixing_hash([{"drop": "2026-*", "weight": 3.0}])
    summary = PairsSummary(30, 5, 0, 0, ("d1",), {}, "train-hash", "eval-hash", mixing=(a,), mixing_hash="m")
    assert summary.train_data_key == "train-hash+m"


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"drop": "2026-*", "wieght": 2.0}, "unknown setting(s) split.mixing.wieght; split.mixing has: drop"),
        ({"drop": "2026-*", "format": "dolly", "weight": 2.0}, "(it names drop, format)"),
        ({"weight": 2.0}, "(it names none)"),
        ({"drop": "2026-*", "weight": -1.0}, "greater than or equal to 0"),
        ({"drop": "2026-*", "weight": float("inf")}, "finite number"),
        ({"drop": "2026-*"}, "weight"),
    ],
)  # fmt: skip
def test_rules_are_refused_with_what_is_wrong(rule, message):
    with pytest.raises(ValidationError, match="mixing") as refused:
        SplitConfig(mixing=[rule])
    assert message in str(refused.value)


def test_the_table_counts_each_rules_rows_and_the_rows_expected_per_pass():
    table = mixture_table(rows(30), [{"drop": "2026-*", "weight": 2.0}, {"format": "sharegpt", "weight": 0.5}])
    assert table == [
        {"rule": "drop=2026-*", "rows": 20, "weight": 2.0, "expected_rows": 30.0},
        {"rule": "format=sharegpt", "rows": 10, "weight": 0.5, "expected_rows": 10.0},
        {"rule": "all train rows", "rows": 30, "weight": None, "expected_rows": 40.0},
    ]


# ---- instruction_pairs records the rules; the training stages apply them ----------------------------

VALIDATED = pa.schema(
    [
        *(("kind", pa.string()), ("messages", MESSAGES), ("chosen", pa.string()), ("rejected", pa.string())),
        *(("tools", pa.string()), ("n_tokens", pa.int64()), ("drop", pa.string()), ("source_file", pa.string())),
        *(("source_line", pa.int64()), ("format", pa.string()), ("gx_result", pa.string())),
    ]
)


def validated(n: int) -> list[dict]:
    """`n` validated rows of one drop, from two files of different formats."""
    return [
        {
            "kind": "sft",
            "messages": [{"role": "user", "content": f"Ticket {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            "n_tokens": 12,
            "drop": "2026-01-05",
            "source_file": f"2026-01-05/{'support.jsonl' if i % 2 else 'chat.json'}",
            "source_line": i // 2 + 1,
            "format": "openai_chat" if i % 2 else "sharegpt",
        }
        for i in range(n)
    ]


def validated_records(folder, n: int):
    """The validated rows, and a `validated_records` stand-in handing them on as one drop."""
    with RecordWriter(folder / "validated.parquet", VALIDATED, ("tools",)) as out:
        out.write(validated(n))
    records = out.record_set(partition="2026-01-05")

    @dg.asset(name="validated_records")
    def stand_in():
        return records

    return records, stand_in


def test_instruction_pairs_records_the_rules_and_shows_their_table(tmp_path):
    rules = [{"source_file": "*support*", "weight": 2.0}, {"format": "sharegpt", "weight": 0.5}]
    records, stand_in = validated_records(tmp_path, 40)
    result = dg.materialize(
        [stand_in, instruction_pairs],
        resources={"split": SplitConfig(mixing=rules), "state": StateStore(home=str(tmp_path / "home"))},
    )
    pairs = result.output_for_node("instruction_pairs")
    summary, train = pairs.summary, pairs.frame(where=[("split", "=", "train")])
    support = int(train["source_file"].str.contains("support").sum())
    assert set(train["format"]) == {"openai_chat", "sharegpt"}, "each pair keeps its file's format"
    assert summary.mixing == tuple(rules) and summary.mixing_hash == mixing_hash(rules)
    assert summary.mixing_table[0] == {"rule": "source_file=*support*", "rows": support, "weight": 2.0,
                                       "expected_rows": 2.0 * support}  # fmt: skip
    assert summary.mixing_table[-1]["rows"] == summary.train_rows == len(train)
    metadata = result.asset_materializations_for_node("instruction_pairs")[0].metadata
    table = metadata["mixing"].value
    assert "| rule | train rows matched | weight | expected rows trained per pass |" in table
    assert f"| source_file=*support* | {support} | 2 | {2 * support} |" in table
    assert metadata["mixing_hash"].value == summary.mixing_hash

    plain, tally, _ = write_pairs([("2026-01-05", records)], SplitConfig(), tmp_path / "plain.parquet", tmp_path)
    assert plain.rows == pairs.rows and tally.summary().train_set_hash == summary.train_set_hash, (
        "the rules change no row of the split and not its hash: they are recorded beside it"
    )


def pairs_with(folder, rules: list[dict], kind: str = "sft"):
    frame = rows(12).assign(kind=kind, split="train", n_tokens=10, chosen="yes", rejected="no")
    frame["messages"] = [
        [{"role": "user", "content": f"Q {i}"}, {"role": "assistant", "content": "A"}] for i in frame.index
    ]
    with RecordWriter(folder / f"pairs-{kind}.parquet", PAIRS_SCHEMA, ("tools",)) as out:
        out.write(frame.to_dict("records"))
    summary = PairsSummary(12, 0, 0, 0, DROPS, {}, "t", "e", mixing=tuple(rules), mixing_hash=mixing_hash(rules))
    return out.record_set(summary=summary)


def test_sft_and_dpo_train_on_the_mixed_rows(tmp_path):
    rules = [{"drop": "2026-*", "weight": 3.0}, {"format": "dolly", "weight": 0.0}]
    training = TrainingConfig(method="sft")
    train, _ = sft_examples(pairs_with(tmp_path, rules), training)
    assert len(train) == 4 + 3 * 4, "2025's rows once, 2026-01's three times, 2026-02's (dolly) not at all"
    assert times_sampled(train) == times_sampled(mixed(rows(12), rules, training.seed))
    plain, _ = sft_examples(pairs_with(tmp_path, []), training)
    assert len(plain) == 12
    preference = pairs_with(tmp_path, rules, kind="preference")
    recipe = dpo_recipe(TrainingConfig(method="dpo"), preference, lineage().trained, {"data": "t"})
    assert len(recipe.examples) == 16


# ---- the registered version states its mixing ---------------------------------------------------------


def test_a_version_trained_with_mixing_states_its_rules_counts_and_hash():
    rules = ({"drop": "2026-*", "weight": 2.0},)
    table = (
        {"rule": "drop=2026-*", "rows": 20, "weight": 2.0, "expected_rows": 40.0},
        {"rule": "all train rows", "rows": 80, "weight": None, "expected_rows": 100.0},
    )
    pairs = PairsSummary(80, 10, 0, 0, ("d1", "d2"), {}, "h", "e", mixing=rules, mixing_table=table, mixing_hash="mh")
    record = replace(lineage(), data=DataCounts.of(pairs, rows_raw=100, rows_valid=95, rows_rejected=5))
    params, tags = record.mlflow_params(), record.version_tags()
    assert params["split.mixing"] == '[{"drop": "2026-*", "weight": 2.0}]'
    assert params["data.mixing_hash"] == tags["data.mixing_hash"] == "mh"
    assert params["data.train_set_hash"] == tags["data.train_set_hash"] == "h"
    assert '"rule": "drop=2026-*", "rows": 20' in params["split.mixing_rows"]
    assert params["data.train_rows_expected"] == "100.0"
    card = model_card(record, "v3")
    assert (
        "- Mixing (`split.mixing`, hash `mh`): `drop=2026-*` x2 (20 rows); 80 train rows sampled to about 100" in card
    )

    plain = lineage()
    assert plain.mlflow_params()["split.mixing"] == "[]"
    assert "data.mixing_hash" not in plain.version_tags() and "Mixing" not in model_card(plain, "v1")
