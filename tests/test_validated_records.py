"""The record suite (Great Expectations) on small frames of good and bad rows."""

import pandas as pd
import pytest

from assets.raw_records import build_frame
from assets.validated_records import reason_text, with_features
from data_checks.record_checks import share_check_result, suite_check_result
from data_checks.record_suite import record_suite
from resources.expectations import GreatExpectations

GOOD = {
    "instruction": "Triage the ticket.",
    "input": "My RouterX is down.",
    "output": '{"product": "RouterX"}',
}


def frame_of(rows):
    return build_frame(
        [{**r, "source_file": "d/t.jsonl", "source_line": i + 1, "drop": "d"} for i, r in enumerate(rows)]
    )


@pytest.fixture(scope="module")
def validate(bundled_tokenizer):
    def run(rows, max_tokens=128):
        frame = with_features(frame_of(rows), bundled_tokenizer, "Be precise.")
        report = GreatExpectations().validate(frame, record_suite(max_tokens))
        return frame, report, report.failing_reasons()

    return run


def test_good_rows_pass_every_expectation(validate):
    rows = [GOOD, {**GOOD, "input": "CloudDrive will not sync."}, {**GOOD, "input": None}]
    frame, report, failing = validate(rows)
    assert report.success and failing == {}
    assert all(o.element_count == 3 for o in report.outcomes)
    assert (frame["system"] == "Be precise.").all()


def test_each_bad_row_is_rejected_for_the_rule_it_breaks(validate):
    rows = [
        GOOD,
        {**GOOD, "output": "   "},
        {**GOOD, "instruction": None},
        {**GOOD, "input": "  my routerx IS down. "},
        {**GOOD, "input": "word " * 300},
        {**GOOD, "input": "Another ticket", "output": None},
    ]
    frame, report, failing = validate(rows)
    assert not report.success
    assert failing == {
        1: ["output is blank"],
        2: ["instruction is missing"],
        3: ["duplicate (case/whitespace-insensitive) of an earlier row"],
        4: ["formatted example is longer than max_tokens=128"],
        5: ["output is missing"],
    }
    assert frame.loc[3, "duplicate_of"] == "d/t.jsonl:1"
    row3, row4 = frame.loc[3].to_dict(), frame.loc[4].to_dict()
    assert reason_text(failing[3], row3).endswith("(d/t.jsonl:1)")
    assert (
        reason_text(failing[4], row4)
        == f"formatted example is longer than max_tokens=128: {row4['n_tokens']} tokens"
    )


def test_per_row_system_prompt_is_kept(validate):
    frame, _, _ = validate([{**GOOD, "system": "Answer in JSON."}, {**GOOD, "input": "x", "system": " "}])
    assert frame["system"].tolist() == ["Answer in JSON.", "Be precise."]


def test_token_count_is_of_the_formatted_chat_example(validate, bundled_tokenizer):
    frame, _, _ = validate([GOOD])
    messages = [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": "Triage the ticket.\n\nMy RouterX is down."},
        {"role": "assistant", "content": GOOD["output"]},
    ]
    assert frame.loc[0, "n_tokens"] == len(bundled_tokenizer.apply_chat_template(messages)["input_ids"])


def test_check_results_show_values_beside_thresholds(validate):
    _, report, _ = validate([GOOD, {**GOOD, "output": ""}])
    suite = suite_check_result(report)
    assert not suite.passed and suite.metadata["failing_expectations"].value == 1
    assert "output is blank | 1 | 2 | no" in suite.metadata["expectations"].value

    over = share_check_result(10, ["output is blank"] * 2, ["f:1: output is blank"], max_fraction=0.1)
    assert not over.passed
    assert over.metadata["rejected_fraction"].value == pytest.approx(0.2)
    assert over.metadata["max_rejected_fraction"].value == pytest.approx(0.1)
    assert over.metadata["top_reasons"].value == {"output is blank": 2}
    assert share_check_result(10, ["output is blank"], [], max_fraction=0.1).passed


def test_empty_frame_is_a_clean_pass():
    frame = pd.DataFrame(
        {c: pd.Series(dtype=object) for c in ("row_id", "instruction", "output", "n_tokens", "duplicate_of")}
    )
    report = GreatExpectations().validate(frame, record_suite(64))
    assert report.failing_reasons() == {}
