"""Answer-quality rules: each catches its planted answer, leaves good ones alone, and rejects, warns or
is off as `validation.answer_quality` says, through the suite and a real validated_records run."""

import itertools
from pathlib import Path
from urllib.parse import urlparse

import pytest

from assets.validated_records import AnswerQualityConfig, ValidationConfig
from data_checks.answer_quality import (
    AnswerRules,
    BoilerplateRule,
    RepetitionRule,
    ShortAnswerRule,
    TruncatedRule,
    answer_features,
    boilerplate,
    mojibake,
    repetition,
    short_answer,
    truncated,
)
from data_checks.record_rules import RuleValues, mark_duplicates, rows_with_features
from data_checks.record_suite import FEATURE_SQL_COLUMNS, failure_detail, record_suite
from resources.expectations import GreatExpectations
from resources.records import FirstSeen
from tests.conftest import validate_drop

LONG_QUESTION = "Explain in detail " + " ".join(f"point{i}" for i in range(60)) + "?"
EXPLANATION = (
    "Photosynthesis turns light into chemical energy. Plants take in carbon dioxide and water, and with the "
    "energy of sunlight they make glucose and release oxygen. The glucose feeds the plant's growth."
)
REPEATED = "\n".join(["Call support to reset the router."] * 6 + [f"Step {i} of the guide." for i in range(4)])
REPEATED += " " + " ".join(f"word{i}" for i in range(40)) + "."
CUT = "The router keeps the settings in flash memory, so after a reset you must log in again and restore the"
PLANTED = {
    "boilerplate": ("Summarize the ticket.", "As an AI language model, I cannot read tickets."),
    "repetition": ("How do I reset it?", REPEATED),
    "truncated": ("Why did my settings go?", CUT),
    "mojibake": ("Where shall we meet?", "At the CafÃ© on the corner."),
    "short_answer": (LONG_QUESTION, "Yes"),
}
COLUMN = {
    "boilerplate": "answer_boilerplate",
    "repetition": "answer_repetition",
    "truncated": "answer_truncated",
    "mojibake": "answer_mojibake",
    "short_answer": "answer_short",
}


def chat(prompt, answer):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_each_measure_catches_its_planted_answer_and_leaves_good_ones():
    assert boilerplate("As an AI language model, I can't.", BoilerplateRule()) == 'contains "as an ai language model"'
    assert (
        boilerplate("I\u2019m sorry, but I can\u2019t share that.", BoilerplateRule())
        == "contains \"i'm sorry, but i can't\""
    )
    assert boilerplate(EXPLANATION, BoilerplateRule()) is None
    assert repetition(REPEATED, RepetitionRule()) == "50% duplicate lines > 30%"
    gopher = RepetitionRule(min_words=10, top_2gram_fraction=0.2, duplicate_5gram_fraction=0.15)
    assert repetition(EXPLANATION * 2, gopher) == "repeated 5-grams cover 31% of characters > 15%"
    assert repetition(EXPLANATION * 2, RepetitionRule(min_words=10)) is None, "the defaults allow a list's echoes"
    loop = "The router must be restarted before the update. " * 6
    assert repetition(loop, RepetitionRule(min_words=10)) == "repeated 5-grams cover 69% of characters > 40%"
    assert repetition(EXPLANATION, RepetitionRule(min_words=10)) is None
    assert repetition("ok ok ok", RepetitionRule()) is None, "too short to measure (Gopher's 50 words)"
    assert truncated(CUT, TruncatedRule()).startswith("20 words ending mid-sentence")
    for finished in (EXPLANATION, CUT + " network.", CUT + ' {"a": 1}', CUT + "\n```", CUT + ":\n- step one"):
        assert truncated(finished, TruncatedRule()) is None
    assert truncated("Paris", TruncatedRule()) is None, "a short answer needs no period"
    assert mojibake("At the CafÃ© on the corner.") == 'ftfy fixes "Ã© on the co" to "é on the co"'
    assert mojibake("At the Café, naïve façade, 東京, emoji 🙂.") is None
    assert short_answer("Yes", LONG_QUESTION, ShortAnswerRule()) == "1 word answering a 63-word prompt (fewer than 2)"
    assert short_answer("Yes", "Is Paris in France?", ShortAnswerRule()) is None
    assert short_answer(EXPLANATION, LONG_QUESTION, ShortAnswerRule()) is None


def test_a_preference_pair_is_judged_by_its_chosen_reply():
    prompt = [{"role": "user", "content": "Summarize the ticket."}]
    config = AnswerRules()
    bad_rejected = answer_features(prompt, "The router is down.", config)
    assert not any(bad_rejected.values()), "a poor rejected reply is what a preference pair is for"
    assert answer_features(prompt, "I'm sorry, but I can't help.", config)["answer_boilerplate"]


def test_off_measures_nothing_and_unknown_keys_are_refused():
    config = AnswerQualityConfig(boilerplate={"mode": "off"}, mojibake={"mode": "off"}).rules()
    found = answer_features(chat(*PLANTED["boilerplate"])["messages"], None, config)
    assert found["answer_boilerplate"] is None
    with pytest.raises(ValueError, match="unknown setting.*validation.answer_quality.repetiton"):
        AnswerQualityConfig(repetiton={})
    with pytest.raises(ValueError, match="validation.answer_quality.truncated.min_word;"):
        ValidationConfig(answer_quality={"truncated": {"min_word": 3}})
    with pytest.raises(ValueError, match="validation.answer_quality.short_answer.words;"):
        ValidationConfig(answer_quality={"short_answer": {"words": 3}})
    assert ValidationConfig().answer_quality.rules() == AnswerRules(), "the section's defaults are the rules'"


@pytest.fixture(scope="module")
def validate(bundled_tokenizer, tmp_path_factory):
    """Rows through the asset's steps (features, table, suite, reasons) with answer-quality settings."""
    folder = tmp_path_factory.mktemp("answers")
    gx = GreatExpectations(project_dir=str(folder / "gx"))
    runs = itertools.count()

    def run(records, answer_quality):
        n = next(runs)
        config = ValidationConfig(max_tokens=512, truncate_over_long=False, answer_quality=answer_quality)
        rules = RuleValues(512, False, config.system_prompt, config.pii, config.answer_quality.rules())
        raw = [
            {"row_id": i, "drop": "d", "source_file": "d/t.jsonl", "source_line": i + 1, "format": "openai_chat",
             "record": r}
            for i, r in enumerate(records)
        ]  # fmt: skip
        rows = rows_with_features(raw, bundled_tokenizer, rules)
        mark_duplicates(rows, FirstSeen(folder / f"seen-{n}.sqlite"))
        features = gx.features_file(f"answers-{n}", FEATURE_SQL_COLUMNS)
        features.store("records", rows)
        suite = record_suite(512, "records", False, rules.answer_quality.modes())
        report = gx.validate_features(features, "records", suite)
        features.record_reasons(report, failure_detail)
        reasons = features.reasons_of([r["row_id"] for r in rows])
        features.close()
        return rows, report, reasons

    return run


def planted_rows():
    good = [chat(f"Explain topic {i}.", EXPLANATION.replace("Photosynthesis", f"Topic {i}")) for i in range(3)]
    return good + [chat(*PLANTED[name]) for name in COLUMN]


def test_reject_names_the_measure_and_good_rows_pass(validate):
    rules = {name: {"mode": "reject"} for name in COLUMN}
    rows, report, reasons = validate(planted_rows(), rules)
    assert not report.success
    assert set(reasons) == {3, 4, 5, 6, 7}, "the three good rows keep every rule"
    assert reasons[3] == 'answer is a boilerplate refusal: contains "as an ai language model"'
    assert reasons[4] == "answer repeats itself: 50% duplicate lines > 30%"
    assert reasons[5].startswith("answer ends mid-sentence: 20 words ending mid-sentence")
    assert reasons[6].startswith("answer has mojibake (mis-decoded text): ftfy fixes")
    assert reasons[7] == "answer too short for its prompt: 1 word answering a 63-word prompt (fewer than 2)"
    for i, name in enumerate(COLUMN, start=3):
        assert [c for c in COLUMN.values() if rows[i][c]] == [COLUMN[name]], "each row breaks its own rule only"


def test_warn_keeps_the_rows_and_counts_them(validate):
    rules = {name: {"mode": "warn"} for name in COLUMN}
    _, report, reasons = validate(planted_rows(), rules)
    assert reasons == {} and report.success, "warnings keep their rows and the suite's verdict"
    warned = {o.column: o.unexpected_count for o in report.outcomes if o.warn}
    assert warned == dict.fromkeys(COLUMN.values(), 1)


def test_off_rules_measure_nothing_and_show_as_off(validate):
    rules = {name: {"mode": "off"} for name in COLUMN}
    rows, report, reasons = validate(planted_rows(), rules)
    assert reasons == {} and report.success
    assert not any(r[c] for r in rows for c in COLUMN.values())
    assert {o.rule for o in report.outcomes if o.column in COLUMN.values()} == {
        "answer is a boilerplate refusal (off)",
        "answer repeats itself (off)",
        "answer ends mid-sentence (off)",
        "answer has mojibake (mis-decoded text) (off)",
        "answer too short for its prompt (off)",
    }


@pytest.mark.integration
def test_validated_records_shows_each_rule_per_drop(tmp_path, tiny_model_dir):
    """A real materialization of a planted drop: rejected rows carry the measure, warned rows are
    kept, and the drop's metadata counts each rule with its mode."""
    filler = [chat(f"Tell me about city {i}.", f"City {i} is a fine place to visit.") for i in range(20)]
    answer_quality = {"boilerplate": {"mode": "reject"}, "repetition": {"mode": "reject"}, "mojibake": {"mode": "warn"}}
    rows = filler + [chat(*PLANTED[name]) for name in COLUMN]
    drop = validate_drop(tmp_path, tiny_model_dir, "2026-03-01", rows, {"answer_quality": answer_quality})
    result, resources, metadata = drop.result, drop.resources, drop.metadata
    assert metadata["rows_rejected"] == 2
    assert "| answer is a boilerplate refusal | reject | 1 |" in metadata["answer_quality"]
    assert "| answer ends mid-sentence | warn | 1 |" in metadata["answer_quality"]
    assert metadata["rows_warned"] == {
        "answer ends mid-sentence": 1,
        "answer has mojibake (mis-decoded text)": 1,
        "answer too short for its prompt": 1,
    }
    page = (resources["gx"].docs_dir / Path(urlparse(metadata["data_docs"]).path).name).read_text()
    assert "answer ends mid-sentence <em>(warning: rows kept)</em>" in page, "the drop's page marks the warnings"
    assert "answer repeats itself</td>" in page
    rejected_rows = result.output_for_node("validated_records", "rejected_records")
    reasons = sorted(r["reason"] for batch in rejected_rows.batches(["reason"]) for r in batch)
    assert reasons == ['answer is a boilerplate refusal: contains "as an ai language model"',
                       "answer repeats itself: 50% duplicate lines > 30%"]  # fmt: skip
    validated = result.output_for_node("validated_records", "validated_records")
    assert len(validated) == 23, "the warned rows are kept"
