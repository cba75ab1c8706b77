"""The Great Expectations suite every raw record must pass before it may be trained on.

The rules read feature columns that `validated_records` computes per row (what is missing, what is
wrong with the chat structure, the tool calls or the text, whether the base model's chat template
refuses it, the token length of the formatted example, which earlier row it duplicates); Great
Expectations decides which rows break which rule and keeps the record.
Each expectation's `meta["rule"]` is the wording a user sees beside a rejected row, followed by the
row's value in that column.

`FEATURES` is the one list of those columns: the features table Great Expectations reads, the
feature fields of the validated rows' Parquet schema and the suite are all derived from it.
"""

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from resources.expectations import ExpectationOutcome


@dataclass(frozen=True)
class Feature:
    """One feature column: its types in SQLite and Parquet, and the rule the suite checks on it."""

    column: str
    sql_type: str
    arrow_type: pa.DataType
    rule: str
    """Wording shown beside a rejected row; `{max_tokens}` is filled in from the suite's limit."""
    expectation: Literal["null", "at_most_max_tokens"]
    """'null': the row breaks the rule when the column holds a value; 'at_most_max_tokens': when
    the value is above max_tokens."""
    unit: str = ""
    """Word after the row's value in its rejection reason ('300 tokens')."""
    bad_data: bool = True
    """Whether breaking the rule makes a row bad data, counted against `max_rejected_fraction`.
    An over-long row is good data that does not fit the length budget: it is left out of training
    with its reason and counted on its own, so a drop of long real data is never held back for it."""
    rule_when_cut: str = ""
    """The wording instead of `rule` when over-long rows are cut to fit first (validation's
    truncate_over_long): then only rows whose shortest form is over the budget break the rule."""
    moded: bool = False
    """An answer-quality rule: its mode (validation.answer_quality) makes breaking it reject the row,
    only warn (the expectation's severity 'warning': the row is kept and counted), or it is off."""


# In the order of the features table's columns and of the suite's expectations.
FEATURES = (
    Feature("missing_fields", "TEXT", pa.string(), "required field missing or blank", "null"),
    Feature("structure_error", "TEXT", pa.string(), "chat structure broken", "null"),
    Feature("tool_call_error", "TEXT", pa.string(), "tool call invalid", "null"),
    Feature("hygiene_error", "TEXT", pa.string(), "text hygiene", "null"),
    Feature("template_error", "TEXT", pa.string(), "the base model's chat template refuses this conversation", "null"),
    Feature(
        "n_tokens",
        "INTEGER",
        pa.int64(),
        "formatted example is longer than max_tokens={max_tokens}",
        "at_most_max_tokens",
        unit="tokens",
        bad_data=False,
        rule_when_cut="the final answer alone is longer than max_tokens={max_tokens}",
    ),
    Feature("duplicate_of", "TEXT", pa.string(), "duplicate of an earlier row", "null"),
    # Answer-quality rules (`data_checks.answer_quality`): each rejects, warns or is off (`moded`).
    Feature("answer_boilerplate", "TEXT", pa.string(), "answer is a boilerplate refusal", "null", moded=True),
    Feature("answer_repetition", "TEXT", pa.string(), "answer repeats itself", "null", moded=True),
    Feature("answer_truncated", "TEXT", pa.string(), "answer ends mid-sentence", "null", moded=True),
    Feature("answer_mojibake", "TEXT", pa.string(), "answer has mojibake (mis-decoded text)", "null", moded=True),
    Feature("answer_short", "TEXT", pa.string(), "answer too short for its prompt", "null", moded=True),
    # The row's measured `language` is not one of validation.languages (`data_checks.languages`).
    Feature("language_error", "TEXT", pa.string(), "row in another language", "null"),
)
FEATURE_COLUMNS = tuple(f.column for f in FEATURES)
# (column, SQLite type) of the features table, for `resources.features_file.FeaturesFile`.
FEATURE_SQL_COLUMNS = tuple((f.column, f.sql_type) for f in FEATURES)
FEATURE_FIELDS = [pa.field(f.column, f.arrow_type) for f in FEATURES]
_UNITS = {f.column: f.unit for f in FEATURES if f.unit}
# Indexes (in suite order) of the expectations whose failure alone does not make a row bad data.
NOT_BAD_DATA = frozenset(i for i, f in enumerate(FEATURES) if not f.bad_data)
# The answer-quality columns, whose mode decides what breaking them does.
MODED_COLUMNS = tuple(f.column for f in FEATURES if f.moded)
# After the wording of a rule that is off.
OFF_MARK = " (off)"


def rule_of(feature: Feature, max_tokens: int, cut_to_fit: bool = False) -> str:
    """The feature's rule as a rejected row shows it, for a suite of this limit."""
    rule = feature.rule_when_cut if cut_to_fit and feature.rule_when_cut else feature.rule
    return rule.format(max_tokens=max_tokens)


def too_long_rule(max_tokens: int, cut_to_fit: bool = False) -> str:
    """Why an over-long row is left out: over the budget, or, rows being cut to fit, over it even cut."""
    return rule_of(next(f for f in FEATURES if f.expectation == "at_most_max_tokens"), max_tokens, cut_to_fit)


def failure_detail(outcome: ExpectationOutcome, value: Any) -> str:
    """One broken rule as a rejected row's reason shows it: the rule, then the row's value."""
    unit = _UNITS.get(outcome.column or "")
    return f"{outcome.rule}: {value} {unit}" if unit else f"{outcome.rule}: {value}"


def _expectation(feature: Feature, max_tokens: int, cut_to_fit: bool, mode: str):
    import great_expectations.expectations as gxe

    rule = rule_of(feature, max_tokens, cut_to_fit)
    # A rule that is off is not measured (its column is empty): shown as off, it passes.
    meta = {"rule": rule + OFF_MARK if mode == "off" else rule, **({"mode": mode} if feature.moded else {})}
    severity = "warning" if mode == "warn" else "critical"
    if feature.expectation == "null":
        return gxe.ExpectColumnValuesToBeNull(column=feature.column, meta=meta, severity=severity)
    return gxe.ExpectColumnValuesToBeBetween(column=feature.column, max_value=max_tokens, meta=meta)


def record_suite(max_tokens: int, name: str = "records", cut_to_fit: bool = False, modes: dict[str, str] | None = None):
    """The suite over the features table: one expectation per feature, in `FEATURES` order.
    `cut_to_fit`: over-long rows were cut to fit first, so the length rule says why one still is not.
    `modes`: answer-quality column -> 'reject', 'warn' (severity 'warning') or 'off' (default reject)."""
    import great_expectations as gx

    modes = modes or {}
    # Built unbound (expectations passed to the constructor): the resource adds it to its context.
    expectations = [_expectation(f, max_tokens, cut_to_fit, modes.get(f.column, "reject")) for f in FEATURES]
    return gx.ExpectationSuite(name=name, expectations=expectations)
