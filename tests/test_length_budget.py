"""The length budget: `validation.max_tokens: auto` from the base model and the preset, over-long
rows cut to fit or left out and counted per drop and per run; and drops whose every row is left
out or rejected, which must name why instead of crashing. The resolution is unit-tested; the rest
runs the real data assets (raw_records, validated_records, instruction_pairs) on the tiny model."""

import json

import dagster as dg
import pytest

from assets.domain.lineage import DataCounts
from assets.domain.values import PairsSummary
from assets.validated_records import ValidationConfig, length_budget, model_context
from pipelines.presets import stage_resources
from pipelines.run import step_errors
from tests.conftest import make_settings, run_all

# Words of one token each (with their leading space) in the bundled tokenizer: lengths are easy to aim.
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "see", "what", "was", "there"]
DOLLY_LIKE_TOKENS = (400, 600)


def text(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


# ---- resolving max_tokens -----------------------------------------------------------------------


def test_auto_is_the_models_context_capped_by_the_presets_ceiling():
    small = length_budget("auto", 2048, {"max_position_embeddings": 1024}, None)
    assert small.max_tokens == 1024
    assert small.source == (
        "auto: the smaller of the base model's context (1024, config.json max_position_embeddings) "
        "and max_tokens_ceiling (2048)"
    )
    assert length_budget("auto", 2048, {"max_position_embeddings": 8192}, 8192).max_tokens == 2048
    assert length_budget("auto", 8192, {"text_config": {"max_position_embeddings": 32768}}, None).max_tokens == 8192
    unknown = length_budget("auto", 2048, {}, None)
    assert unknown.max_tokens == 2048 and "states no context length" in unknown.source
    explicit = length_budget(300, 2048, {"max_position_embeddings": 128}, None)
    assert (explicit.max_tokens, explicit.source) == (300, "validation.max_tokens")


def test_the_tokenizers_limit_counts_only_when_it_is_a_real_number_and_smaller():
    assert model_context({"max_position_embeddings": 4096}, int(1e30)) == (4096, "config.json max_position_embeddings")
    assert model_context({"max_position_embeddings": 4096}, 2048) == (2048, "the tokenizer's model_max_length")
    assert model_context({"n_positions": 1024}, 4096) == (1024, "config.json n_positions")
    assert model_context({}, 512) == (512, "the tokenizer's model_max_length")


def test_max_tokens_is_auto_or_a_positive_number():
    assert ValidationConfig().max_tokens == "auto" and ValidationConfig(max_tokens=512).max_tokens == 512
    for wrong in ("long", 0, -5, True, 2.5):
        with pytest.raises(ValueError, match="must be 'auto' or a positive number of tokens"):
            ValidationConfig(max_tokens=wrong)


def test_each_preset_sets_its_ceiling():
    ceilings = {name: stage_resources(name)["validation"].max_tokens_ceiling for name in ("cpu", "gpu", "smoke")}
    assert ceilings == {"cpu": 2048, "gpu": 8192, "smoke": 512}
    assert all(stage_resources(name)["validation"].max_tokens == "auto" for name in ceilings)
    assert ValidationConfig().max_tokens_ceiling == 2048 and ValidationConfig().truncate_over_long


def test_the_runs_counts_carry_the_cut_and_left_out_rows_to_mlflow():
    summary = PairsSummary(3, 1, 0, 0, ("d",), {}, "t", "e", rows_truncated=4, rows_left_out=2)
    counts = DataCounts.of(summary, rows_raw=10, rows_valid=8, rows_rejected=2)
    assert (counts.rows_truncated, counts.rows_left_out) == (4, 2)


# ---- through the real data assets ---------------------------------------------------------------


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def m(role, content):
    return {"role": role, "content": content}


def data_run(home, landing, model_dir, preset="cpu", overrides=None):
    """What `make preview` does, by `make run`'s driver: prepare the base model, ingest every drop, then
    the `training_data` job (instruction_pairs). Returns (instance, the problems, its result)."""
    settings = make_settings(home, str(model_dir), landing=landing, preset=preset).prepare()
    _, instance, result, problems = run_all(settings, overrides, job="training_data")
    return instance, problems, result


def partition_metadata(instance, asset: str, drop: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[drop]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory, tiny_model_dir):
    """The cpu preset on the tiny model (context 1024): a drop of Dolly-sized rows (400-600 tokens),
    and a drop of chats longer than the budget, one of them with an answer that alone is longer."""
    landing = tmp_path_factory.mktemp("landing")
    dolly = [
        {"instruction": f"Summarize note {i}.", "context": text(290 + 38 * i), "response": text(80), "category": "x"}
        for i in range(6)
    ]
    write_jsonl(landing / "2026-03-01" / "dolly.jsonl", dolly)
    chats = []
    for i in range(3):  # five exchanges of about 300 tokens: some of the earliest must go
        turns = [m("user", f"Part {i}.{k}: {text(150)}") for k in range(5)]
        chats.append({"messages": [t for u in turns for t in (u, m("assistant", text(150)))]})
    chats.append({"messages": [m("user", "Tell it all."), m("assistant", text(1200))]})  # the answer alone is over
    chats += [{"messages": [m("user", f"Hi {i}"), m("assistant", "Hello.")]} for i in range(2)]
    write_jsonl(landing / "2026-03-02" / "chats.jsonl", chats)
    instance, problems, result = data_run(tmp_path_factory.mktemp("ft_long"), landing, tiny_model_dir)
    return instance, problems, result


def test_rows_longer_than_256_tokens_pass_unchanged_on_the_default_preset(long_rows, bundled_tokenizer):
    instance, problems, result = long_rows
    assert result.success and problems == []
    metadata = partition_metadata(instance, "validated_records", "2026-03-01")
    assert metadata["max_tokens"] == 1024, "the tiny model's context, under the cpu preset's 2048"
    assert metadata["max_tokens_source"].startswith("auto: the smaller of the base model's context (1024")
    assert (metadata["rows"], metadata["rows_rejected"], metadata["rows_truncated"]) == (6, 0, 0)
    pairs = result.output_for_node("instruction_pairs").frame()
    dolly = pairs[pairs["drop"] == "2026-03-01"]
    assert DOLLY_LIKE_TOKENS[0] <= dolly["n_tokens"].min() and dolly["n_tokens"].max() <= DOLLY_LIKE_TOKENS[1]
    for messages, n in zip(dolly["messages"], dolly["n_tokens"]):
        assert len(bundled_tokenizer.apply_chat_template(messages)["input_ids"]) == n, "measured as trained"


def test_over_long_rows_are_cut_or_left_out_and_counted_per_drop_and_per_run(long_rows):
    instance, _, result = long_rows
    metadata = partition_metadata(instance, "rejected_records", "2026-03-02")
    assert (metadata["rows_truncated"], metadata["truncations"]) == (3, {"earlier turns dropped": 3})
    assert metadata["rows_left_out"] == 1
    assert metadata["left_out_reason"] == "the final answer alone is longer than max_tokens=1024"
    assert metadata["drop_status"] == "passed: in training"
    pairs = result.output_for_node("instruction_pairs")
    frame = pairs.frame()
    chats = frame[frame["drop"] == "2026-03-02"].sort_values("source_line")
    assert len(chats) == 5 and chats["n_tokens"].max() <= 1024
    cut = chats.iloc[0]["messages"]
    assert (
        cut[0]["role"] == "system"
        and cut[1]["content"].startswith("Part 0.")
        and not cut[1]["content"].startswith("Part 0.0")
    ), "the earliest exchanges went first"
    assert cut[-1]["role"] == "assistant" and len(cut) % 2 == 1, "whole exchanges: system, then user/assistant pairs"
    run = instance.get_latest_materialization_event(dg.AssetKey("instruction_pairs")).asset_materialization.metadata
    assert (run["rows_truncated"].value, run["rows_left_out"].value) == (3, 1)
    assert run["length_reasons"].value == {
        "cut to fit: earlier turns dropped": 3,
        "left out: the final answer alone is longer than max_tokens=1024": 1,
    }
    assert "| 3 (earlier turns dropped (3)) | 1 (the final answer alone is longer than max_tokens=1024) |" in (
        run["drop_quality"].value
    )
    assert (pairs.summary.rows_truncated, pairs.summary.rows_left_out) == (3, 1)


@pytest.fixture(scope="module")
def nothing_left(tmp_path_factory, tiny_model_dir):
    """A drop whose every row is left out for length (a tiny explicit max_tokens) and a drop whose
    every row is rejected as bad data."""
    landing = tmp_path_factory.mktemp("landing")
    rows = [{"instruction": f"Explain item {i}.", "output": text(30)} for i in range(5)]
    write_jsonl(landing / "2026-04-01" / "long.jsonl", rows)
    write_jsonl(landing / "2026-04-02" / "empty.jsonl", [{"instruction": f"Q{i}", "output": ""} for i in range(4)])
    overrides = {"validation": {"max_tokens": 16}}
    return data_run(tmp_path_factory.mktemp("ft_nothing"), landing, tiny_model_dir, "smoke", overrides)


def test_a_drop_whose_every_row_is_left_out_passes_and_says_it_has_nothing_to_train_on(nothing_left):
    instance, problems, _ = nothing_left
    assert not any("TypeError" in p for p in problems)
    assert "2026-04-01" in instance.get_materialized_partitions(dg.AssetKey("validated_records"))
    metadata = partition_metadata(instance, "validated_records", "2026-04-01")
    assert metadata["drop_status"] == (
        "passed, nothing to train on: all 5 rows left out: the final answer alone is longer than max_tokens=16"
    )
    assert (metadata["rows"], metadata["rows_left_out"], metadata["max_tokens_source"]) == (
        0,
        5,
        "validation.max_tokens",
    )


def test_a_drop_whose_every_row_is_rejected_is_held_back_naming_the_top_reasons(nothing_left):
    instance, problems, _ = nothing_left
    status = (
        "held back: failed the quality gate: 4 of 4 rows rejected as bad data (required field missing or blank (4))"
    )
    assert partition_metadata(instance, "rejected_records", "2026-04-02")["drop_status"] == status
    assert any(
        p.startswith("- check rejected_share_within_limit on drop 2026-04-02 (error): 4 of 4 rows rejected as bad")
        and "top reasons: required field missing or blank (4)" in p
        for p in problems
    )


def test_the_runs_error_names_the_true_cause(nothing_left):
    _, _, result = nothing_left
    assert not result.success
    assert step_errors(result.all_events) == [
        "- step instruction_pairs: ValueError: Nothing to train on: the drops that passed validation hold no rows. "
        "Drop 2026-04-01: passed, nothing to train on: all 5 rows left out: the final answer alone is longer "
        "than max_tokens=16. Drop 2026-04-02: held back: failed the quality gate: 4 of 4 rows rejected as bad "
        "data (required field missing or blank (4))."
    ]
