"""Per-slice results: every per-item metric per drop, source file and category, from the category
carried through ingestion and validation to the eval items, to the tables, chart and card that show it."""

import io
from dataclasses import replace

import pandas as pd
import pytest

from assets.domain.lineage import model_card
from assets.domain.metrics import NO_VALUE, slice_groups, slice_rows, slice_values, slices_table
from assets.domain.preferences import chosen_conversations
from assets.domain.values import ChampionScores, Evaluation
from assets.instruction_pairs import PAIRS_SCHEMA, SplitConfig, build_pairs, write_pairs
from assets.model_evaluation import evaluation_metadata
from assets.raw_records import IngestConfig
from assets.registered_model import log_comparison, slices_chart, slices_frame
from data_checks.promotion_gate import GateConfig
from data_checks.record_rules import RuleValues, conversation_row
from resources.records import RecordWriter
from tests.test_formats import CASES, MAPPED_CASE, MAPPING, TOOL_CHAT, ingest
from tests.test_instruction_pairs import VALIDATED_COLUMNS, validated, validated_set
from tests.test_metrics_and_gate import lineage

# Six eval prompts: two drops of one file each, three categories (the last two rows have none).
SLICES = {
    "drop": ("d1", "d1", "d1", "d2", "d2", "d2"),
    "source_file": ("d1/a.jsonl",) * 3 + ("d2/b.csv",) * 3,
    "category": ("qa", "qa", "summary", "summary", None, None),
}
# Two held-out preference pairs, from one drop each.
PAIR_SLICES = {"drop": ("d3", "d4"), "source_file": ("d3/p.jsonl", "d4/p.jsonl"), "category": (None, None)}
ITEMS = {
    "base": {
        "exact_match": (0.0, 0.0, 0.0, 1.0, 0.0, 0.0),
        "rougeL": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
        "probe_perplexity": (10.0, 12.0, 8.0),
        "preference_accuracy": (0.0, 1.0),
    },
    "tuned": {
        "exact_match": (1.0, 1.0, 0.0, 0.0, 1.0, 0.0),
        "rougeL": (0.5, 0.7, 0.3, 0.2, 0.9, 0.6),
        "probe_perplexity": (11.0, 12.0, 9.0),
        "preference_accuracy": (1.0, 1.0),
    },
}
CHAMPION = {"exact_match": (1.0, 0.0, 0.0, 1.0, 1.0, 1.0), "rougeL": (0.5,) * 6}


def mean(values):
    return sum(values) / len(values)


def evaluation(champion: dict | None = CHAMPION, slices=SLICES, pair_slices=PAIR_SLICES) -> Evaluation:
    """An evaluation built by hand from ITEMS (and the champion's items, when given)."""
    means = {model: {k: mean(v) for k, v in items.items()} for model, items in ITEMS.items()}
    return Evaluation(
        primary_metric="exact_match",
        task_type="open_ended",
        base=means["base"],
        tuned=means["tuned"],
        champion=None
        if champion is None
        else ChampionScores("3", False, {k: mean(v) for k, v in champion.items()}, champion),
        forgetting_pct=5.0,
        eval_examples=6,
        eval_set_hash="e",
        settings_hash="s",
        items=ITEMS,
        slices=slices,
        pair_slices=pair_slices,
    )


def rows_of(ev: Evaluation) -> list[dict]:
    return slice_rows(ev.model_items, ev.slices, ev.primary_metric, ev.pair_slices)


def row(rows, slice_, value, metric) -> dict:
    (found,) = [r for r in rows if (r["slice"], r["value"], r["metric"]) == (slice_, value, metric)]
    return found


# ---- the breakdown ------------------------------------------------------------------------------


def test_each_metric_is_averaged_per_slice_value_with_its_changes():
    rows = rows_of(evaluation())
    qa = row(rows, "category", "qa", "exact_match")
    assert qa == {
        "slice": "category", "value": "qa", "items": 2, "metric": "exact_match", "primary": True,
        "base": 0.0, "tuned": 1.0, "change": 1.0, "champion": 0.5, "change_vs_champion": 0.5,
    }  # fmt: skip
    d2 = row(rows, "drop", "d2", "rougeL")
    assert (d2["items"], d2["base"], d2["tuned"], d2["change"]) == (3, 0.5, 0.5667, 0.0667)
    assert (d2["champion"], d2["change_vs_champion"], d2["primary"]) == (0.5, 0.0667, False)
    assert row(rows, "category", NO_VALUE, "exact_match")["items"] == 2, "rows without a category are a slice"


def test_the_primary_metric_comes_first_and_only_per_prompt_metrics_are_sliced_by_prompt():
    rows = rows_of(evaluation())
    prompt_rows = [r for r in rows if r["metric"] != "preference_accuracy"]
    assert [(r["slice"], r["metric"]) for r in prompt_rows[:2]] == [("drop", "exact_match")] * 2
    assert [r["metric"] for r in prompt_rows if r["slice"] == "category"] == ["exact_match"] * 3 + ["rougeL"] * 3
    assert "probe_perplexity" not in {r["metric"] for r in rows}, "kept per probe text, not per prompt"
    pairs = [r for r in rows if r["metric"] == "preference_accuracy"]
    assert [(r["slice"], r["value"], r["items"], r["base"], r["tuned"]) for r in pairs] == [
        ("drop", "d3", 1, 0.0, 1.0),
        ("drop", "d4", 1, 1.0, 1.0),
    ], "preference pairs by their own labels; the champion kept no per-pair scores"
    assert pairs[0]["champion"] is None and pairs[0]["change_vs_champion"] is None


def test_scores_of_other_items_are_not_sliced_by_the_prompts_labels():
    suite = {"suite.general.acc": (1.0, 0.0, 1.0, 1.0, 0.0, 1.0)}  # as many questions as prompts, by chance
    odd = {"token_f1": (0.5, 0.5)}  # not one score per prompt
    items = {model: {**scores, **suite, **odd} for model, scores in ITEMS.items()}
    metrics = {r["metric"] for r in slice_rows(items, SLICES, "exact_match", PAIR_SLICES)}
    assert metrics == {"exact_match", "rougeL", "preference_accuracy"}


def test_only_fields_that_split_the_items_are_shown():
    assert list(slice_groups(SLICES)) == ["drop", "category"], "one file per drop: source_file repeats drop"
    assert slice_groups({"drop": ("d1",) * 3, "category": (None, "", float("nan"))}) == {}, "one value each"
    two_files = {**SLICES, "source_file": ("a", "b", "a", "c", "c", "c")}
    assert list(slice_groups(two_files)) == ["drop", "source_file", "category"]
    assert rows_of(evaluation(slices={"drop": ("d1",) * 6}, pair_slices={})) == []


def test_an_evaluation_made_before_slices_existed_has_none():
    old = Evaluation("exact_match", "json", {}, {}, None, 0.0, 6, "e", "s", items=ITEMS)
    assert (old.slices, old.pair_slices, rows_of(old)) == ({}, {}, [])
    assert slices_table([]).startswith("No breakdown: no slice field (drop, source_file, category)")


def test_the_table_shows_the_rows_and_the_champion_columns_only_with_a_champion():
    lines = slices_table(rows_of(evaluation())).splitlines()
    assert lines[0] == "| slice | value | items | metric | base | tuned | change | champion | vs champion |"
    assert "| category | qa | 2 | exact_match (primary) | 0.0000 | 1.0000 | +1.0000 | 0.5000 | +0.5000 |" in lines
    assert "| drop | d3 | 1 | preference_accuracy | 0.0000 | 1.0000 | +1.0000 | - | - |" in lines
    plain = slices_table(rows_of(evaluation(champion=None))).splitlines()
    assert plain[0] == "| slice | value | items | metric | base | tuned | change |"
    assert len(plain) == len(lines)


def test_a_champion_scored_on_other_items_has_no_slice_means():
    ev = evaluation(champion={"exact_match": (1.0, 0.0)})
    assert {r["champion"] for r in rows_of(ev)} == {None}


# ---- the views ----------------------------------------------------------------------------------


def test_dagster_metadata_has_the_slices_table():
    ev = evaluation()
    metadata = evaluation_metadata(ev, pd.DataFrame({"prompt": ["p"]}), 5, GateConfig())
    assert metadata["slices"].value == slices_table(rows_of(ev))


def test_the_model_card_shows_the_primary_metric_per_slice():
    card = model_card(replace(lineage(), evaluation=evaluation()), "v1")
    section = card.split("### Per slice\n")[1].split("## Promotion gate")[0]
    assert "`exact_match` per slice" in section and "eval/slices.csv" in section
    assert "| drop | d1 | 3 | exact_match (primary) | 0.0000 | 0.6667 | +0.6667 | 0.3333 | +0.3333 |" in section
    assert "rougeL" not in section and "preference_accuracy" not in section
    assert "### Per slice" not in model_card(lineage(), "v1"), "no breakdown, no section"


class RecordingRun:
    """Stands in for `TrackedRun`: remembers what was logged where."""

    def __init__(self):
        self.logged = {}

    def log_text(self, text, path):
        self.logged[path] = text

    def log_figure(self, figure, path):
        self.logged[path] = figure


def test_mlflow_gets_the_slices_as_a_table_and_a_chart():
    run = RecordingRun()
    log_comparison(run, evaluation())
    assert {"eval/comparison.csv", "eval/comparison.png", "eval/slices.csv", "eval/slices.png"} == set(run.logged)
    frame = pd.read_csv(io.StringIO(run.logged["eval/slices.csv"]))
    assert frame.to_dict("records")[0] == row(rows_of(evaluation()), "drop", "d1", "exact_match")
    panels = run.logged["eval/slices.png"].axes
    assert [ax.get_title() for ax in panels] == ["exact_match per drop", "exact_match per category"]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == [f"{NO_VALUE} (2)", "qa (2)", "summary (2)"]
    assert len(panels[0].patches) == 2 * 3, "two drops, three models"
    alone = RecordingRun()
    log_comparison(alone, evaluation(slices={"drop": ("d1",) * 6}, pair_slices={}))
    assert set(alone.logged) == {"eval/comparison.csv", "eval/comparison.png"}, "no breakdown, no slices files"


def test_a_field_that_only_slices_preference_pairs_charts_their_metric():
    frame = slices_frame(evaluation(slices={"drop": ("d1",) * 6}))
    assert [ax.get_title() for ax in slices_chart(frame).axes] == ["preference_accuracy per drop"]


# ---- the category, from the raw record to the eval items -----------------------------------------

RULES = RuleValues(max_tokens=64, truncate_over_long=True, system_prompt="Be precise.", pii="warn")


def with_categories(records: list[dict], field: str = "category") -> list[dict]:
    """The records, the first with a category and the second without one."""
    return [{**records[0], field: "billing"}, *({k: v for k, v in r.items() if k != field} for r in records[1:])]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", [*sorted(CASES), "mapped", "tool_chat"])
def test_every_format_carries_a_category_into_the_validated_row(fmt, suffix, tmp_path):
    records = {"mapped": MAPPED_CASE[0], "tool_chat": TOOL_CHAT}.get(fmt) or CASES[fmt][0]
    config = IngestConfig(column_mapping=MAPPING) if fmt == "mapped" else IngestConfig()
    rows = ingest(tmp_path, with_categories(records), suffix, False, config)
    converted = [conversation_row(r, RULES) for r in rows]
    assert [r["category"] for r in converted] == ["billing", None]
    assert all(r["structure_error"] is None and r["missing_fields"] is None for r in converted)


def test_the_category_field_is_a_setting_and_a_file_without_it_has_none(tmp_path):
    records = with_categories(CASES["alpaca"][0], field="topic")
    rows = ingest(tmp_path, records, ".jsonl", False, IngestConfig(category_field="topic"))
    assert [conversation_row(r, RULES)["category"] for r in rows] == ["billing", None]
    rows = ingest(tmp_path, records, ".jsonl", False, IngestConfig())
    assert {r["category_field"] for r in rows} == {None}, "no `category` field in the file"
    assert [conversation_row(r, RULES)["category"] for r in rows] == [None, None]
    rows = ingest(tmp_path, CASES["dolly"][0], ".jsonl", False, IngestConfig(category_field=""))
    assert [conversation_row(r, RULES)["category"] for r in rows] == [None, None], "empty: none read"


def test_pairs_keep_the_category_and_drops_validated_before_it_existed_still_pair(tmp_path):
    rows = [{**r, "category": f"c{i % 2}"} for i, r in enumerate(validated(20))]
    assert [p["category"] for p in build_pairs(rows, 0.2)] == [f"c{i % 2}" for i in range(20)]
    with RecordWriter(tmp_path / "new.parquet", VALIDATED_COLUMNS.append(PAIRS_SCHEMA.field("category"))) as out:
        out.write(rows)
    old = validated_set(tmp_path, validated(20, start=100), name="old")  # no category column
    drops = [("old", old), ("new", out.record_set(partition="new"))]
    written, _, _ = write_pairs(drops, SplitConfig(eval_fraction=0.2), tmp_path / "pairs.parquet", tmp_path)
    frame = written.record_set().frame()
    assert frame["category"].tolist() == [None] * 20 + [f"c{i % 2}" for i in range(20)]


def test_eval_items_take_their_labels_in_order_also_as_chosen_conversations():
    pairs = pd.DataFrame(
        {
            "messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
            "chosen": ["x", "y"],
            "rejected": ["z", "w"],
            "drop": ["d1", "d2"],
            "source_file": ["d1/p.jsonl", "d2/p.jsonl"],
            "category": ["qa", None],
        }
    )
    assert slice_values(pairs) == {"drop": ("d1", "d2"), "source_file": ("d1/p.jsonl", "d2/p.jsonl"),
                                   "category": ("qa", None)}  # fmt: skip
    assert slice_values(chosen_conversations(pairs)) == slice_values(pairs)
    assert "category" not in slice_values(pairs.drop(columns="category")), "pairs written before categories"


# ---- the real graph -----------------------------------------------------------------------------


@pytest.mark.integration
def test_the_pipeline_slices_its_evaluation_by_drop_in_both_uis(pipeline):
    """The sample's eval prompts come from three ticket drops (one file each, no category field)."""
    first, settings = pipeline["first"], pipeline["settings"]
    evaluation = first.output_for_node("model_evaluation")
    assert {k: len(v) for k, v in evaluation.slices.items()} == dict.fromkeys(
        ("drop", "source_file", "category"), evaluation.eval_examples
    )
    assert set(evaluation.slices["category"]) == {None}
    assert len(evaluation.pair_slices["drop"]) == evaluation.preference_pairs
    rows = rows_of(evaluation)
    assert len(set(evaluation.slices["drop"])) > 1 and {r["slice"] for r in rows} == {"drop"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run_id = client.get_model_version(settings.model_name, "1").run_id
    eval_artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/slices.csv", "eval/slices.png"} <= eval_artifacts
    metadata = first.asset_materializations_for_node("model_evaluation")[0].metadata
    assert metadata["slices"].value == slices_table(rows)
