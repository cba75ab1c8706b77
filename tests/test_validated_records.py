"""The record suite (Great Expectations) on small frames of good and bad rows."""

import itertools
import re
from pathlib import Path

import pandas as pd
import pytest

from assets.validated_records import AnswerQualityConfig, ValidationConfig
from data_checks.record_checks import (
    IN_TRAINING,
    PiiTally,
    Rejections,
    drop_quality,
    personal_data_result,
    share_check_result,
    suite_check_result,
)
from data_checks.record_rules import mark_duplicates, rows_with_features, structure_problem
from data_checks.record_suite import FEATURE_COLUMNS, FEATURE_SQL_COLUMNS, failure_detail, record_suite
from resources.expectations import GreatExpectations
from resources.records import FirstSeen

GOOD = {"instruction": "Triage the ticket.", "input": "My RouterX is down.", "output": '{"product": "RouterX"}'}


def m(role, content):
    return {"role": role, "content": content}


def raw(rows, fmt="alpaca"):
    return [
        {"row_id": i, "drop": "d", "source_file": "d/t.jsonl", "source_line": i + 1, "format": fmt, "record": r}
        for i, r in enumerate(rows)
    ]


def featured(raw_rows, tokenizer, config, seen):
    """A batch's rows with every feature, as `features_pass` computes them: in the batch, then
    `duplicate_of` against every row seen before."""
    rows = rows_with_features(raw_rows, tokenizer, config)
    mark_duplicates(rows, seen)
    return rows


@pytest.fixture(scope="module")
def validate(bundled_tokenizer, tmp_path_factory):
    """Rows through the asset's steps: features, the features table, the suite, the reasons."""
    folder = tmp_path_factory.mktemp("validation")
    gx = GreatExpectations(project_dir=str(folder / "gx"))
    runs = itertools.count()

    def run(rows, fmt="alpaca", tokenizer=bundled_tokenizer, **config):
        n = next(runs)
        # Over-long rows left whole unless a test asks for the cut (the default), and the answer-quality
        # rules off (tests/test_answer_quality.py has them), so each rule shows alone.
        values = {"max_tokens": 128, "system_prompt": "Be precise.", "truncate_over_long": False, **config}
        values.setdefault("answer_quality", {rule: {"mode": "off"} for rule in AnswerQualityConfig.model_fields})
        config = ValidationConfig(**values)
        rows = featured(raw(rows, fmt), tokenizer, config, FirstSeen(folder / f"seen-{n}.sqlite"))
        features = gx.features_file(f"test-{n}", FEATURE_SQL_COLUMNS)
        features.store("records", rows)
        modes = config.answer_quality.rules().modes()
        report = gx.validate_features(
            features, "records", record_suite(config.max_tokens, "records", values["truncate_over_long"], modes)
        )
        features.record_reasons(report, failure_detail)
        reasons = features.reasons_of([r["row_id"] for r in rows])
        features.close()
        return pd.DataFrame(rows), report, reasons

    return run


def test_good_rows_pass_every_expectation(validate):
    rows = [GOOD, {**GOOD, "input": "CloudDrive will not sync."}, {**GOOD, "input": None}]
    frame, report, reasons = validate(rows)
    assert report.success and reasons == {}
    assert all(o.element_count == 3 for o in report.outcomes)
    assert [msgs[0] for msgs in frame["messages"]] == [m("system", "Be precise.")] * 3


def test_each_bad_row_is_rejected_for_the_rule_it_breaks(validate):
    rows = [
        GOOD,
        {**GOOD, "output": "   "},
        {**GOOD, "instruction": None},
        {**GOOD, "input": "  my routerx IS down. "},
        {**GOOD, "input": "word " * 300},
        {**GOOD},
        {**GOOD, "input": "Bell \x07 in the text"},
        {**GOOD, "input": "Mojibake \ufffd here"},
    ]
    frame, report, reasons = validate(rows)
    assert not report.success
    assert reasons == {
        1: "required field missing or blank: output",
        2: "required field missing or blank: instruction",
        3: "duplicate of an earlier row: same as d/t.jsonl:1 up to case and whitespace",
        4: f"formatted example is longer than max_tokens=128: {frame.loc[4, 'n_tokens']} tokens",
        5: "duplicate of an earlier row: exact duplicate of d/t.jsonl:1",
        6: "text hygiene: control character U+0007",
        7: "text hygiene: U+FFFD replacement character (text was decoded with the wrong encoding upstream)",
    }


def test_a_row_breaking_several_rules_lists_them_all(validate):
    _, _, reasons = validate([GOOD, {**GOOD, "input": "\x07 " + "word " * 300}])
    assert reasons[1].startswith("text hygiene: control character U+0007; formatted example is longer")


def test_chat_structure_rules(validate):
    rows = [
        {"messages": [m("user", "Hi"), m("assistant", "Hello")]},
        {"messages": [m("user", "Hi"), m("user", "Again"), m("assistant", "Hello")]},
        {"messages": [m("user", "Hi"), m("assistant", "Hello"), m("user", "Bye")]},
        {"messages": [m("user", "Hi2"), m("assistant", "")]},
        {"messages": [m("user", "Hi3"), m("system", "x"), m("assistant", "y")]},
        {"messages": [m("tool", "42")]},
        {"messages": [m("bot", "42")]},
    ]
    _, _, reasons = validate(rows, fmt="openai_chat")
    assert reasons == {
        1: "chat structure broken: turn 2 is from the user, expected the assistant (turns must alternate)",
        2: "chat structure broken: last turn is from the user; a training example ends with the assistant's answer",
        3: "chat structure broken: turn 2 (assistant) is empty",
        4: "chat structure broken: turn 2 is a system message; only the first message may be one",
        5: "chat structure broken: turn 1 is a tool reply, but the turn before it made no tool call",
        6: "chat structure broken: messages[1] has unknown role 'bot'",
    }


def test_tool_calling_rows_pass_or_are_rejected_for_their_calls(validate):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}

    def row(name="get_weather", arguments='{"city": "Oslo"}', answered="c1", city="Oslo"):
        call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}
        return {
            "tools": [weather],
            "messages": [
                m("user", f"Weather in {city}?"),
                {"role": "assistant", "content": None, "tool_calls": [call], "weight": 0},
                {"role": "tool", "tool_call_id": answered, "content": "rain"},
                {"role": "assistant", "content": "Rain.", "weight": 1},
            ],
        }

    rows = [row(), row("get_time", city="Rome"), row(arguments="{oops", city="Bonn"), row(answered="c2", city="Nice")]
    frame, _, reasons = validate(rows, fmt="openai_chat", max_tokens=512)
    assert reasons == {
        1: "tool call invalid: turn 2 calls 'get_time', which is not among the row's tools (get_weather)",
        2: "tool call invalid: turn 2 calls 'get_weather' with arguments that are not valid JSON "
        "(Expecting property name enclosed in double quotes at column 2): '{oops'",
        3: "tool call invalid: turn 3 answers tool call 'c2', which no earlier assistant turn made",
    }
    assert frame.loc[0, "tools"] == [weather] and frame.loc[0, "messages"][2]["weight"] == 0


def test_structure_problem_for_preference_prompts():
    assert structure_problem([m("user", "p")], "preference") is None
    assert structure_problem([m("user", "p"), m("assistant", "a")], "preference").startswith("a preference prompt")


def test_preference_pairs_are_measured_by_their_longer_answer(validate):
    rows = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "word " * 300}]
    frame, _, reasons = validate(rows, fmt="preference")
    assert frame.loc[0, "kind"] == "preference"
    assert reasons[0].startswith("formatted example is longer than max_tokens=128")


def test_over_long_rows_are_cut_to_fit_by_default_and_keep_their_answer(validate, bundled_tokenizer):
    assert ValidationConfig().truncate_over_long, "cut to fit is the default"
    rows = [{**GOOD, "input": "word " * 300}]
    frame, _, reasons = validate(rows, truncate_over_long=True)
    assert reasons == {} and frame.loc[0, "truncated"] and frame.loc[0, "truncation"] == "last user turn cut"
    ids = bundled_tokenizer.apply_chat_template(frame.loc[0, "messages"])["input_ids"]
    assert frame.loc[0, "n_tokens"] == len(ids) <= 128, "measured exactly as the tokenizer counts the cut row"
    assert frame.loc[0, "messages"][-1] == m("assistant", GOOD["output"])
    frame, _, reasons = validate(rows)
    assert not frame.loc[0, "truncated"] and reasons[0].startswith("formatted example is longer than max_tokens=128")


def test_a_row_whose_answer_alone_is_too_long_is_left_out_with_that_reason(validate):
    rows = [GOOD, {**GOOD, "output": "word " * 300}, {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "no " * 300}]
    frame, report, reasons = validate(rows[:2], truncate_over_long=True)
    assert reasons == {1: f"the final answer alone is longer than max_tokens=128: {frame.loc[1, 'n_tokens']} tokens"}
    assert frame.loc[1, "n_tokens"] > 300 and not frame.loc[1, "truncated"]
    _, _, reasons = validate(rows[2:], fmt="preference", truncate_over_long=True)
    assert reasons[0].startswith("the final answer alone is longer than max_tokens=128: "), "never an answer cut"
    # the drop's quality tells the row left out for length apart from rows rejected as bad data
    quality = drop_quality(2, Rejections(total=1, over_long=1), report, PiiTally(), IN_TRAINING)
    assert (quality["rows_rejected"], quality["rejected_share"], quality["rows_left_out"]) == (0, 0.0, 1)
    assert quality["top_reasons"].value == "-", "the length rule is not among the reasons for bad data"


def test_rows_the_chat_template_refuses_are_rejected_as_bad_data_with_its_message(validate, bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'tool' %}"
        "{{ raise_exception('Tool role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    tool_row = {
        "messages": [
            m("user", "Weather in Oslo?"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            m("assistant", "Rain."),
        ]
    }
    plain = {"messages": [m("user", "Hi"), m("assistant", "Hello.")]}
    frame, report, reasons = validate([plain, tool_row], fmt="openai_chat", tokenizer=tokenizer)
    assert reasons == {1: "the base model's chat template refuses this conversation: Tool role not supported"}
    assert frame.loc[0, "n_tokens"] > 0
    (refusals,) = [o for o in report.outcomes if o.column == "template_error"]
    assert refusals.unexpected_count == 1 and not refusals.success


def test_personal_data_is_flagged_or_redacted(validate):
    rows = [{**GOOD, "input": "Reach me at dana@example.com or +1 415-555-0132."}, GOOD]
    frame, _, reasons = validate(rows)
    assert reasons == {}
    assert frame.loc[0, "pii"] == {"email": 1, "phone": 1} and frame.loc[1, "pii"] is None
    warn = PiiTally().add(frame.to_dict("records"))
    assert (warn.flagged, dict(warn.totals)) == (1, {"email": 1, "phone": 1})
    assert warn.examples == ["d/t.jsonl:1: email, phone"]

    frame, _, _ = validate(rows, pii="redact")
    assert "Reach me at [EMAIL] or [PHONE]." in frame.loc[0, "messages"][1]["content"]


def test_personal_data_warns_once_for_the_drops_that_train(validate):
    """One verdict over the drops that train, from each drop's figures: a warning naming the drop and
    its rows while they are kept, a pass once they are redacted; a drop held back does not count."""
    rows = [{**GOOD, "input": "Reach me at dana@example.com or +1 415-555-0132."}, GOOD]
    frame, report, _ = validate(rows)

    def quality(mode: str) -> dict:
        tally = PiiTally(mode=mode).add(frame.to_dict("records"))
        figures = drop_quality(2, Rejections(0), report, tally, IN_TRAINING)
        return {k: getattr(v, "value", v) for k, v in figures.items()}  # as read back from the metadata

    clean = {**quality("warn"), "pii_rows": 0}
    kept = personal_data_result({"d1": clean, "d2": quality("warn"), "d3": quality("warn")}, ["d1", "d2"])
    assert not kept.passed and kept.severity.value == "WARN"
    assert kept.description == (
        "1 rows with possible personal data in the examples that train (drop d2: 1 rows, email 1, phone 1): "
        "kept (set pii: redact to replace them)"
    )
    assert "| d2 | 1 | email 1, phone 1 | kept | d/t.jsonl:1: email, phone |" in kept.metadata["drops"].value
    redacted = personal_data_result({"d2": quality("redact")}, ["d2"])
    assert redacted.passed and redacted.description.endswith(": redacted")
    assert personal_data_result({"d1": clean, "d2": None}, ["d1", "d2"]).passed


def test_token_count_is_of_the_formatted_chat_example(validate, bundled_tokenizer):
    frame, _, _ = validate([GOOD])
    ids = bundled_tokenizer.apply_chat_template(frame.loc[0, "messages"])["input_ids"]
    assert frame.loc[0, "n_tokens"] == len(ids)


def test_check_results_show_values_beside_thresholds(validate):
    frame, report, reasons = validate([GOOD, {**GOOD, "output": ""}])
    suite = suite_check_result(report)
    assert not suite.passed and suite.metadata["failing_expectations"].value == 1
    assert "required field missing or blank | 1 | 2 | no" in suite.metadata["expectations"].value
    assert suite.metadata["data_docs"].value.startswith("file://")

    over = share_check_result(10, Rejections(2), ["d/t.jsonl:2: ..."], 0.1, report)
    assert not over.passed
    assert over.metadata["rejected_fraction"].value == pytest.approx(0.2)
    assert over.metadata["max_rejected_fraction"].value == pytest.approx(0.1)
    assert over.metadata["top_reasons"].value == "| rule | rows |\n|---|---|\n| required field missing or blank | 1 |"
    assert share_check_result(10, Rejections(1), [], 0.1, report).passed
    # over-long rows are good data kept out of training: counted apart, never against the limit
    long = share_check_result(10, Rejections(total=6, over_long=5), [], 0.1, report)
    assert long.passed and long.metadata["rows_left_out"].value == 5 and long.metadata["rows_rejected"].value == 1
    assert "1 of 10 rows rejected as bad data" in long.description
    assert "5 rows left out of training and not counted: longer than max_tokens" in long.description


def test_validation_is_kept_as_json_and_a_data_docs_page(validate):
    _, report, _ = validate([GOOD, {**GOOD, "output": ""}])
    page = Path(report.docs_url.removeprefix("file://")).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    for column in FEATURE_COLUMNS:
        assert column in text
    assert "expect_column_values_to_be_null" in text and "formatted example is longer than max_tokens=128" in text
    assert "required field missing or blank missing_fields expect_column_values_to_be_null 1 2" in text
    assert "1 expectations broken" in text
    assert '"success": false' in Path(report.result_path).read_text()


def test_duplicates_are_found_across_batches(bundled_tokenizer, tmp_path):
    """A drop is validated batch by batch; a repeat in a later batch still names the first row."""
    config = ValidationConfig(max_tokens=128)
    seen = FirstSeen(tmp_path / "seen.sqlite")
    first = featured(raw([GOOD, {**GOOD, "input": "Other."}]), bundled_tokenizer, config, seen)
    later = raw([{**GOOD, "input": "OTHER. "}, GOOD, {**GOOD, "input": "New."}])
    for r in later:
        r["source_line"] += 2
    second = featured(later, bundled_tokenizer, config, seen)
    assert [r["duplicate_of"] for r in first] == [None, None]
    assert [r["duplicate_of"] for r in second] == [
        "same as d/t.jsonl:2 up to case and whitespace",
        "exact duplicate of d/t.jsonl:1",
        None,
    ]


def test_every_failing_row_is_found_however_many_there_are(validate):
    """Great Expectations lists only 20 example rows per expectation; the rejected rows come from
    each expectation's query instead, so none slips through to training."""
    rows = [{**GOOD, "input": f"Ticket {i}: " + "word " * 150} for i in range(45)] + [GOOD]
    _, report, reasons = validate(rows)
    assert len(reasons) == 45 and 45 not in reasons
    (too_long,) = [o for o in report.outcomes if o.column == "n_tokens"]
    assert too_long.unexpected_count == 45
