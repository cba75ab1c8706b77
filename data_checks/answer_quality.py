"""Answer-quality rules: is the answer a row trains on a boilerplate refusal, repetitive, cut off
mid-sentence, mojibake, or too short for its prompt? Plain functions over one row's final answer.

Each rule is one feature column of `record_suite.FEATURES` (None when the answer keeps the rule,
else the measure it broke, e.g. '45% duplicate lines > 30%') and one Great Expectations expectation.
Its mode (`validation.answer_quality.<rule>.mode`) says what breaking it does: 'reject' leaves the
row out (in rejected_records with the measure), 'warn' keeps the row and counts it per drop,
'off' does not measure it. The answer is the SFT row's final assistant turn, or a preference pair's
chosen reply (a poor rejected reply is what a preference pair is for).

Repetition uses the Gopher rules (Rae et al. 2021, "Scaling Language Models", table A1) as
datatrove implements them (`datatrove.pipeline.filters.gopher_repetition_filter`); mojibake is
ftfy's own detection.
"""

import re
from dataclasses import dataclass

from assets.domain.chat import prompt_turns

# The feature column of each rule, in `record_suite.FEATURES` order.
COLUMNS = {
    "boilerplate": "answer_boilerplate",
    "repetition": "answer_repetition",
    "truncated": "answer_truncated",
    "mojibake": "answer_mojibake",
    "short_answer": "answer_short",
}
DEFAULT_PHRASES = (
    "as an ai language model",
    "as a large language model",
    "i cannot assist with",
    "i can't assist with",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am unable to provide",
)
# What an answer that ends its last sentence ends with: sentence punctuation, closing quotes and
# brackets (JSON, code), markdown emphasis and code fences.
FINISHED = tuple(".!?…。！？\"'”’»)]}>*`|")
# Characters of an answer's end quoted in a cut-off answer's measure.
TAIL_CHARS = 40
# Characters of mis-decoded text quoted in a mojibake measure.
SNIPPET_CHARS = 12
LINES = re.compile(r"\n+")
# A list item as an answer's last line ends without punctuation and is not cut off.
LIST_ITEM = re.compile(r"(?:^|\n)[ \t]*(?:[-*•+]|\d+[.)])[ \t]+[^\n]*$")


@dataclass(frozen=True)
class BoilerplateRule:
    mode: str = "reject"
    phrases: tuple[str, ...] = DEFAULT_PHRASES


@dataclass(frozen=True)
class RepetitionRule:
    """Gopher's thresholds (duplicate lines 0.3, top 2-gram 0.2, repeated 5-grams 0.15) are tuned on web
    pages; in instruction answers the n-gram two flag structured lists ("Harry Potter and the ...", one
    row per country with "trillion USD"): 6 of Dolly's 1,147 answers, every one a sound list. The
    defaults keep Gopher's line rule and loosen the n-gram ones to 0.4, above every Dolly answer (at
    most 0.30 and 0.24) and below an answer that loops on one sentence (repeated 5-grams about 0.7).
    It warns by default: set `reject` once a drop's warnings are read as true repetition (templated
    or synthetic data repeats by design)."""

    mode: str = "warn"
    min_words: int = 50
    duplicate_line_fraction: float = 0.3
    top_2gram_fraction: float = 0.4
    duplicate_5gram_fraction: float = 0.4


@dataclass(frozen=True)
class TruncatedRule:
    mode: str = "warn"
    min_words: int = 20


@dataclass(frozen=True)
class MojibakeRule:
    mode: str = "reject"


@dataclass(frozen=True)
class ShortAnswerRule:
    mode: str = "warn"
    min_words: int = 2
    prompt_words: int = 50


@dataclass(frozen=True)
class AnswerRules:
    """Each rule's mode and thresholds, as plain values a worker process receives (the preset's
    `validation.answer_quality`, `assets.validated_records.AnswerQualityConfig`, maps to it)."""

    boilerplate: BoilerplateRule = BoilerplateRule()
    repetition: RepetitionRule = RepetitionRule()
    truncated: TruncatedRule = TruncatedRule()
    mojibake: MojibakeRule = MojibakeRule()
    short_answer: ShortAnswerRule = ShortAnswerRule()

    def modes(self) -> dict[str, str]:
        """Feature column -> the mode of its rule."""
        return {column: getattr(self, name).mode for name, column in COLUMNS.items()}


def boilerplate(answer: str, rule: BoilerplateRule) -> str | None:
    lowered = answer.lower().replace("\u2019", "'")  # a typographic apostrophe matches "i'm"
    found = next((p for p in rule.phrases if p.lower() in lowered), None)
    return None if found is None else f'contains "{found}"'


def repetition(answer: str, rule: RepetitionRule) -> str | None:
    """The first Gopher repetition measure over its threshold, as 'measure > threshold', or None."""
    words = answer.split()
    if len(words) < rule.min_words:
        return None
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_duplicates,
        find_top_duplicate,
        get_n_grams,
    )

    lines = LINES.split(answer.strip())
    share = find_duplicates(lines)[0] / len(lines)
    if share > rule.duplicate_line_fraction:
        return f"{share:.0%} duplicate lines > {rule.duplicate_line_fraction:.0%}"
    share = find_top_duplicate(get_n_grams(words, 2)) / len(answer)
    if share > rule.top_2gram_fraction:
        # datatrove counts overlapping occurrences: a text of one word pair repeated measures over 100%.
        return f"top 2-gram covers {min(share, 1):.0%} of characters > {rule.top_2gram_fraction:.0%}"
    share = find_all_duplicate(words, 5) / len(answer)
    if share > rule.duplicate_5gram_fraction:
        return f"repeated 5-grams cover {share:.0%} of characters > {rule.duplicate_5gram_fraction:.0%}"
    return None


def truncated(answer: str, rule: TruncatedRule) -> str | None:
    text = answer.rstrip()
    n = len(text.split())
    if n < rule.min_words or text.endswith(FINISHED) or LIST_ITEM.search(text):
        return None
    return f'{n} words ending mid-sentence: "…{text[-TAIL_CHARS:]}"'


def mojibake(answer: str) -> str | None:
    """ftfy's verdict: text its badness measure flags and its encoding fixer changes."""
    from ftfy import fix_encoding
    from ftfy.badness import is_bad

    if answer.isascii() or not is_bad(answer):  # mojibake is non-ASCII: most answers skip the regex
        return None
    fixed = fix_encoding(answer)
    if fixed == answer:
        return None
    start = next(i for i, (a, b) in enumerate(zip(answer + "\0", fixed + "\0")) if a != b)
    end = start + SNIPPET_CHARS
    return f'ftfy fixes "{answer[start:end]}" to "{fixed[start : end + len(fixed) - len(answer)]}"'


def short_answer(answer: str, prompt: str, rule: ShortAnswerRule) -> str | None:
    n, asked = len(answer.split()), len(prompt.split())
    if n >= rule.min_words or asked <= rule.prompt_words:
        return None
    return f"{n} word{'' if n == 1 else 's'} answering a {asked}-word prompt (fewer than {rule.min_words})"


def final_answer(messages: list[dict], chosen: str | None) -> tuple[str, str]:
    """(answer, prompt) of a row: the chosen reply or the final assistant turn, and the last user turn."""
    prompt = next((m["content"] for m in reversed(prompt_turns(messages)) if m["role"] == "user"), "")
    if chosen is not None:
        return chosen, prompt
    last = messages[-1] if messages and messages[-1]["role"] == "assistant" else None
    return ((last["content"] or "") if last else ""), prompt


def answer_features(messages: list[dict], chosen: str | None, config: AnswerRules) -> dict[str, str | None]:
    """The answer-quality feature columns of a well-formed row: each rule's broken measure, or None
    (also for a rule that is off, and for an answer without text, e.g. tool calls only)."""
    answer, prompt = final_answer(messages, chosen)
    found = dict.fromkeys(COLUMNS.values())
    if not answer.strip():
        return found
    measures = {
        "boilerplate": lambda: boilerplate(answer, config.boilerplate),
        "repetition": lambda: repetition(answer, config.repetition),
        "truncated": lambda: truncated(answer, config.truncated),
        "mojibake": lambda: mojibake(answer),
        "short_answer": lambda: short_answer(answer, prompt, config.short_answer),
    }
    for name, measure in measures.items():
        if getattr(config, name).mode != "off":
            found[COLUMNS[name]] = measure()
    return found
