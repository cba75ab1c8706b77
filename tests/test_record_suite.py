"""The feature list and what is derived from it: the suite, the features file's tables, the
Parquet fields, the reason wording; and the features file's reasons, fed a hand-made report."""

import pyarrow as pa
import pytest

from assets.validated_records import CANDIDATE_SCHEMA, VALIDATED_SCHEMA
from data_checks.record_suite import (
    FEATURE_COLUMNS,
    FEATURE_FIELDS,
    FEATURE_SQL_COLUMNS,
    failure_detail,
    record_suite,
    too_long_rule,
)
from resources.expectations import FEATURES_FILE, ExpectationOutcome, GreatExpectations, ValidationReport


def test_the_suite_checks_every_feature_in_order_with_its_rule():
    suite = record_suite(128, name="validated_records")
    assert suite.name == "validated_records"
    got = [(e.expectation_type, e.column, e.meta["rule"], getattr(e, "max_value", None)) for e in suite.expectations]
    assert got == [
        ("expect_column_values_to_be_null", "missing_fields", "required field missing or blank", None),
        ("expect_column_values_to_be_null", "structure_error", "chat structure broken", None),
        ("expect_column_values_to_be_null", "tool_call_error", "tool call invalid", None),
        ("expect_column_values_to_be_null", "hygiene_error", "text hygiene", None),
        (
            "expect_column_values_to_be_null",
            "template_error",
            "the base model's chat template refuses this conversation",
            None,
        ),
        ("expect_column_values_to_be_between", "n_tokens", "formatted example is longer than max_tokens=128", 128),
        ("expect_column_values_to_be_null", "duplicate_of", "duplicate of an earlier row", None),
        ("expect_column_values_to_be_null", "answer_boilerplate", "answer is a boilerplate refusal", None),
        ("expect_column_values_to_be_null", "answer_repetition", "answer repeats itself", None),
        ("expect_column_values_to_be_null", "answer_truncated", "answer ends mid-sentence", None),
        ("expect_column_values_to_be_null", "answer_mojibake", "answer has mojibake (mis-decoded text)", None),
        ("expect_column_values_to_be_null", "answer_short", "answer too short for its prompt", None),
        ("expect_column_values_to_be_null", "language_error", "row in another language", None),
    ]
    assert too_long_rule(300) == "formatted example is longer than max_tokens=300"


def test_rows_cut_to_fit_first_are_left_out_only_when_their_answer_alone_is_too_long():
    suite = record_suite(128, cut_to_fit=True)
    rules = {e.column: e.meta["rule"] for e in suite.expectations}
    assert rules["n_tokens"] == too_long_rule(128, cut_to_fit=True)
    assert rules["n_tokens"] == "the final answer alone is longer than max_tokens=128"
    assert rules["missing_fields"] == "required field missing or blank", "only the length rule reads otherwise"


def test_the_parquet_schemas_carry_the_feature_fields():
    assert FEATURE_COLUMNS == (
        "missing_fields",
        "structure_error",
        "tool_call_error",
        "hygiene_error",
        "template_error",
        "n_tokens",
        "duplicate_of",
        "answer_boilerplate",
        "answer_repetition",
        "answer_truncated",
        "answer_mojibake",
        "answer_short",
        "language_error",
    )
    for schema in (VALIDATED_SCHEMA, CANDIDATE_SCHEMA):
        assert [schema.field(f.name) for f in FEATURE_FIELDS] == FEATURE_FIELDS
    assert VALIDATED_SCHEMA.field("n_tokens").type == pa.int64()
    assert VALIDATED_SCHEMA.field("duplicate_of").type == pa.string()
    assert VALIDATED_SCHEMA.field("language").type == pa.string(), "the measured language, beside its rule"


def outcome(column, rule, unexpected, query=None):
    return ExpectationOutcome("expect", column, rule, not unexpected, 4, unexpected, query)


def test_reasons_read_rule_then_value_with_its_unit():
    assert failure_detail(outcome("n_tokens", too_long_rule(8), 1), 12) == (
        "formatted example is longer than max_tokens=8: 12 tokens"
    )
    assert failure_detail(outcome("hygiene_error", "text hygiene", 1), "control character U+0007") == (
        "text hygiene: control character U+0007"
    )


@pytest.fixture
def features(tmp_path):
    gx = GreatExpectations(project_dir=str(tmp_path / "gx"))
    stale = gx.results_dir("drop-1") / FEATURES_FILE
    stale.write_text("left by a failed attempt")
    file = gx.features_file("drop-1", FEATURE_SQL_COLUMNS)
    yield file
    file.close()


def feature_row(row_id, **values):
    return {"row_id": row_id, **dict.fromkeys(FEATURE_COLUMNS), "n_tokens": 5, "other": "not stored", **values}


def test_features_file_lives_in_the_run_folder_and_has_the_feature_columns(features, tmp_path):
    assert features.path == tmp_path / "gx" / "results" / "drop-1" / FEATURES_FILE
    features.store("records", [feature_row(0), feature_row(1, n_tokens=9)])
    columns = [(name, kind) for _, name, kind, *_ in features.db.execute("PRAGMA table_info(records)")]
    assert columns == [("row_id", "INTEGER"), *FEATURE_SQL_COLUMNS]
    assert features.db.execute("SELECT row_id, n_tokens FROM records").fetchall() == [(0, 5), (1, 9)]


def test_reasons_list_every_broken_rule_of_a_row_and_only_passing_rows_are_kept(features):
    features.store(
        "records",
        [
            feature_row(0),
            feature_row(1, hygiene_error="bell", n_tokens=40),
            feature_row(2),
            feature_row(3, n_tokens=50),
        ],
    )
    report = ValidationReport(
        suite="records",
        success=False,
        outcomes=[
            outcome(
                "hygiene_error",
                "text hygiene",
                1,
                "SELECT row_id, hygiene_error FROM records WHERE hygiene_error IS NOT NULL",
            ),
            outcome("n_tokens", too_long_rule(32), 2, "SELECT row_id, n_tokens FROM records WHERE n_tokens > 32"),
            outcome("duplicate_of", "duplicate of an earlier row", 0),
        ],
    )
    with pytest.raises(RuntimeError, match="record_reasons"):
        features.reasons_of([0, 1])
    assert features.record_reasons(report, failure_detail) == 2
    assert features.reasons_of([0, 1, 2, 3]) == {
        1: "text hygiene: bell; formatted example is longer than max_tokens=32: 40 tokens",
        3: "formatted example is longer than max_tokens=32: 50 tokens",
    }
    assert features.reasons_of([0]) == {} and features.reasons_of([]) == {}
    features.keep_passing("records", "validated_records")
    assert [r for (r,) in features.db.execute("SELECT row_id FROM validated_records")] == [0, 2]


def test_a_report_without_failing_rows_rejects_nothing(features):
    features.store("records", [feature_row(0)])
    report = ValidationReport(suite="records", success=True, outcomes=[outcome("n_tokens", too_long_rule(8), 0)])
    assert features.record_reasons(report, failure_detail) == 0
    assert features.reasons_of([0]) == {}


def test_an_empty_table_is_a_passing_validation_not_an_error(features):
    """Great Expectations reports no counts (None) for a table without rows: a drop whose every row
    was rejected leaves its table of passing rows empty, and re-validating it must not fail."""
    gx = GreatExpectations(project_dir=str(features.path.parents[2]))
    features.store("records", [])
    report = gx.validate_features(features, "records", record_suite(8))
    assert report.success
    assert {(o.element_count, o.unexpected_count, o.success) for o in report.outcomes} == {(0, 0, True)}
