"""validated_records and rejected_records: the raw rows as chat examples, split by the quality gate.

The rules live in `data_checks` (`record_rules`: the per-row features; `record_suite`: the
expectations over them); the features file and the Great Expectations runs in `resources`. This
module wires them into the two outputs and the checks.
"""

import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from assets.domain.chat import DEFAULT_SYSTEM_PROMPT
from assets.domain.drops import DROPS
from assets.domain.rows import row_location, with_format
from assets.domain.training import refuse_unknown
from assets.domain.values import EXAMPLE_ROWS, short_run_id
from data_checks.answer_quality import (
    AnswerRules,
    BoilerplateRule,
    MojibakeRule,
    RepetitionRule,
    ShortAnswerRule,
    TruncatedRule,
)
from data_checks.languages import LanguageRule, mix_table
from data_checks.record_checks import (
    CHECK_SPECS,
    PiiTally,
    Rejections,
    drop_quality,
    drop_status,
    share_check_result,
    suite_check_result,
)
from data_checks.record_rules import (
    RuleValues,
    features_in_worker,
    mark_duplicates,
    rows_with_features,
    start_feature_worker,
)
from data_checks.record_suite import (
    FEATURE_FIELDS,
    FEATURE_SQL_COLUMNS,
    NOT_BAD_DATA,
    failure_detail,
    record_suite,
    too_long_rule,
)
from resources.expectations import GreatExpectations, ValidationReport
from resources.features_file import FeaturesFile
from resources.models import ModelLoader
from resources.records import MESSAGES, FirstSeen, RecordSet, RecordWriter
from resources.state import StateStore
from resources.worker_pool import ordered_map

# Tables of the features file: every row's features, then those of the rows that passed.
ALL_ROWS, PASSED_ROWS = "records", "validated_records"


# From this many rows a drop's features are computed in worker processes (validation.workers: 0).
PARALLEL_MIN_ROWS = 50_000
# A tokenizer's model_max_length above this is transformers' placeholder for "not set" (about 1e30),
# not a context length.
SANE_MODEL_MAX_LENGTH = 10_000_000
# ISO 639-1 (two letters); fastText labels a few languages without one by their ISO 639-3 code.
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
# Where a model's config.json states its context length, in the order they are read (the first
# is the usual one; the others are older or other architectures' names for it).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


Mode = Literal["reject", "warn", "off"]
MODE_HELP = "'reject' leaves the row out (in rejected_records, with the measure), 'warn' keeps it and counts it, 'off'."


class AnswerRuleSection(dg.Config):
    """One answer-quality rule's settings (`validation.answer_quality.<rule>`); unknown keys are refused."""

    rule: ClassVar[type] = MojibakeRule
    section: ClassVar[str] = "mojibake"
    mode: Mode = Field(default="reject", description=MODE_HELP)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        return refuse_unknown(cls, values, f"validation.answer_quality.{cls.section}")

    def values(self):
        """The rule as the plain values a worker process reads (`data_checks.answer_quality`)."""
        fields = self.model_dump()
        return self.rule(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


class BoilerplateSection(AnswerRuleSection):
    rule: ClassVar[type] = BoilerplateRule
    section: ClassVar[str] = "boilerplate"
    phrases: list[str] = Field(
        default=list(BoilerplateRule.phrases),
        description="Refusal and assistant boilerplate phrases: an answer holding one (any case) breaks the rule.",
    )


class RepetitionSection(AnswerRuleSection):
    rule: ClassVar[type] = RepetitionRule
    section: ClassVar[str] = "repetition"
    mode: Mode = Field(default=RepetitionRule.mode, description=MODE_HELP)
    min_words: int = Field(
        default=RepetitionRule.min_words, ge=1, description="Shortest answer measured, in words (Gopher: 50)."
    )
    duplicate_line_fraction: float = Field(
        default=RepetitionRule.duplicate_line_fraction,
        description="Most of the lines that may repeat an earlier one (Gopher: 0.3).",
    )
    top_2gram_fraction: float = Field(
        default=RepetitionRule.top_2gram_fraction,
        description="Most of the characters the most frequent word pair may cover (Gopher: 0.2; it flags sound lists).",
    )
    duplicate_5gram_fraction: float = Field(
        default=RepetitionRule.duplicate_5gram_fraction,
        description="Most of the characters repeated 5-word sequences may cover (Gopher: 0.15).",
    )


class TruncatedSection(AnswerRuleSection):
    rule: ClassVar[type] = TruncatedRule
    section: ClassVar[str] = "truncated"
    mode: Mode = Field(default=TruncatedRule.mode, description=MODE_HELP)
    min_words: int = Field(
        default=TruncatedRule.min_words,
        ge=1,
        description="Answers of at least this many words that end without sentence punctuation, a closing quote or "
        "bracket, a code fence or a list item break the rule (shorter ones often rightly have no period).",
    )


class ShortAnswerSection(AnswerRuleSection):
    rule: ClassVar[type] = ShortAnswerRule
    section: ClassVar[str] = "short_answer"
    mode: Mode = Field(default=ShortAnswerRule.mode, description=MODE_HELP)
    min_words: int = Field(
        default=ShortAnswerRule.min_words, ge=1, description="Fewest words an answer to a long prompt may have."
    )
    prompt_words: int = Field(
        default=ShortAnswerRule.prompt_words,
        ge=0,
        description="A last user turn of more words than this is a long prompt.",
    )


class AnswerQualityConfig(dg.Config):
    """`validation.answer_quality`: each rule on the answer a row trains on, with its mode and threshold;
    unknown keys are refused."""

    boilerplate: BoilerplateSection = Field(default_factory=BoilerplateSection, description="Boilerplate refusals.")
    repetition: RepetitionSection = Field(
        default_factory=RepetitionSection, description="Gopher's repetition measures (datatrove)."
    )
    truncated: TruncatedSection = Field(default_factory=TruncatedSection, description="Answers cut off mid-sentence.")
    mojibake: AnswerRuleSection = Field(default_factory=AnswerRuleSection, description="Mis-decoded text (ftfy).")
    short_answer: ShortAnswerSection = Field(
        default_factory=ShortAnswerSection, description="Too short for the prompt."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        return refuse_unknown(cls, values, "validation.answer_quality")

    def rules(self) -> AnswerRules:
        """The sections as the plain values the rules read."""
        return AnswerRules(**{name: getattr(self, name).values() for name in type(self).model_fields})


class ValidationConfig(dg.ConfigurableResource):
    """The quality gate on each drop: the token budget per example, the share of bad rows a drop may
    have before it is held back, the default system prompt, what to do with personal data, the
    answer-quality rules and the languages rows may be in. The `validation` section of the preset."""

    # `Any`: Dagster's config types have no "int or 'auto'"; the validator below allows just those.
    max_tokens: Any = Field(
        default="auto",
        description="Longest formatted example (chat template applied, base tokenizer) a row may have, in "
        "tokens: 'auto' (the base model's context length, at most max_tokens_ceiling) or a number. Longer rows "
        "are cut to fit (truncate_over_long); a row that cannot fit is left out of training (in "
        "rejected_records, with its reason), good data not counted against max_rejected_fraction. "
        "Training uses the longest kept row as max_length.",
    )
    max_tokens_ceiling: int = Field(
        default=2048,
        gt=0,
        description="The most max_tokens 'auto' allows, whatever the base model's context: what this "
        "preset's hardware trains in reasonable time and memory.",
    )
    truncate_over_long: bool = Field(
        default=True,
        description="Cut an over-long row to fit max_tokens, as the mature trainers do: the earliest whole "
        "exchanges after the system turn first, then the text of the last user turn (of a preference pair: "
        "its prompt); the final answer is never cut. A row whose answer alone does not fit is left out. "
        "False: every over-long row is left out. Cut and left-out rows are counted, each with its reason.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="Processes that convert, scan and measure rows: 0 is auto, every core for a drop of at least "
        f"{PARALLEL_MIN_ROWS:,} rows and this process alone for smaller ones (starting workers costs a few seconds).",
    )
    max_rejected_fraction: float = Field(
        default=0.10,
        description="Largest share of raw rows that may be rejected before the run stops (blocking check).",
    )
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="System message for conversations that bring none of their own.",
    )
    pii: Literal["warn", "redact"] = Field(
        default="warn",
        description="Possible personal data (e-mails, phone and card numbers): 'warn' counts and flags "
        "it; 'redact' replaces it with placeholders such as [EMAIL] before training.",
    )
    answer_quality: AnswerQualityConfig = Field(
        default_factory=AnswerQualityConfig,
        description="Rules on the answer a row trains on (boilerplate refusals, repetition, cut off mid-sentence, "
        "mojibake, too short for its prompt), each with its mode (reject, warn or off) and threshold.",
    )
    languages: list[str] = Field(
        default=[],
        description="The languages rows may be in, as ISO 639-1 codes (e.g. [en, de]); a row detected in another "
        "is rejected with its language. Empty: any language, nothing rejected (the mix is still shown per drop).",
    )
    min_language_confidence: float = Field(
        default=LanguageRule.min_confidence,
        ge=0.0,
        le=1.0,
        description="A row detected with less confidence than this is 'und' (undetermined): shown in the mix, "
        "never rejected for its language.",
    )

    @field_validator("max_tokens")
    @classmethod
    def _auto_or_positive(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"validation.max_tokens must be 'auto' or a positive number of tokens, not {value!r}")

    @property
    def language(self) -> LanguageRule:
        """`languages` and `min_language_confidence` as the language rule reads them."""
        return LanguageRule(tuple(self.languages), self.min_language_confidence)

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value: list[str]) -> list[str]:
        codes = [str(code).strip().lower() for code in value]
        if bad := [code for code in codes if not LANGUAGE_CODE.fullmatch(code)]:
            raise ValueError(f"validation.languages takes ISO 639-1 codes such as 'en' or 'de', not {bad}")
        return codes


@dataclass(frozen=True)
class LengthBudget:
    """The max_tokens a drop is validated against, and where it came from (shown in the metadata)."""

    max_tokens: int
    source: str


def model_context(config: dict, tokenizer_max: int | None) -> tuple[int, str] | None:
    """The base model's context length and where it is stated: its config.json (or the text
    model's part of a multimodal config), or the tokenizer's `model_max_length` when that is a real
    number and smaller. None when neither states one."""
    found = None
    for section, prefix in ((config, ""), (config.get("text_config") or {}, "text_config.")):
        key = next((k for k in CONTEXT_KEYS if isinstance(section.get(k), int) and section[k] > 0), None)
        if key is not None:
            found = (section[key], f"config.json {prefix}{key}")
            break
    if tokenizer_max and 0 < tokenizer_max < SANE_MODEL_MAX_LENGTH and (found is None or tokenizer_max < found[0]):
        found = (int(tokenizer_max), "the tokenizer's model_max_length")
    return found


def length_budget(setting: int | str, ceiling: int, config: dict, tokenizer_max: int | None) -> LengthBudget:
    """validation.max_tokens resolved: a number as it is; 'auto' as the base model's context length
    (`model_context`) capped by `ceiling` (max_tokens_ceiling), or the ceiling when the model states none."""
    if setting != "auto":
        return LengthBudget(int(setting), "validation.max_tokens")
    context = model_context(config, tokenizer_max)
    if context is None:
        return LengthBudget(ceiling, f"auto: max_tokens_ceiling ({ceiling}); the base model states no context length")
    length, where = context
    return LengthBudget(
        min(length, ceiling),
        f"auto: the smaller of the base model's context ({length}, {where}) and max_tokens_ceiling ({ceiling})",
    )


def drop_rules(validation: ValidationConfig, model_config: dict, tokenizer) -> tuple[LengthBudget, RuleValues]:
    """The length budget a drop is validated against (`length_budget`, from the base model's
    config.json and tokenizer) and the settings the rules read, with that budget."""
    budget = length_budget(
        validation.max_tokens,
        validation.max_tokens_ceiling,
        model_config,
        getattr(tokenizer, "model_max_length", None),
    )
    rules = RuleValues(
        budget.max_tokens,
        validation.truncate_over_long,
        validation.system_prompt,
        validation.pii,
        validation.answer_quality.rules(),
        validation.language,
    )
    return budget, rules


def suite_for(rules: RuleValues, table: str):
    """The record suite over `table` of the features file, for the drop's length budget and cutting."""
    return record_suite(rules.max_tokens, table, rules.truncate_over_long, rules.answer_quality.modes())


def recheck_passing(gx: GreatExpectations, features: FeaturesFile, rules: RuleValues) -> dg.AssetCheckResult:
    """The blocking suite check: the rows that passed, validated again on their own (its result shows
    whether the validated output holds only rows that keep every rule)."""
    features.keep_passing(ALL_ROWS, PASSED_ROWS)
    features.close()
    return suite_check_result(gx.validate_features(features, PASSED_ROWS, suite_for(rules, PASSED_ROWS)))


def rejections(features: FeaturesFile, report: ValidationReport, rules: RuleValues) -> Rejections:
    """A drop's rejected rows from the suite's result: every rule each broke, and those that only
    failed the length budget (not bad data)."""
    return Rejections(
        features.record_reasons(report, failure_detail),
        features.rows_breaking_only(NOT_BAD_DATA),
        too_long_rule(rules.max_tokens, rules.truncate_over_long),
    )


SOURCE_FIELDS = [
    ("row_id", pa.int64()),
    ("drop", pa.string()),
    ("source_file", pa.string()),
    ("source_line", pa.int64()),
    ("format", pa.string()),
]
VALIDATED_SCHEMA = pa.schema(
    [
        *SOURCE_FIELDS,
        ("kind", pa.string()),
        ("messages", MESSAGES),
        ("tools", pa.string()),  # JSON: the functions the conversation may call
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("category", pa.string()),  # the record's category field (ingest.category_field), or null
        *FEATURE_FIELDS,
        ("truncated", pa.bool_()),
        ("truncation", pa.string()),  # what was cut to fit max_tokens (record_rules.fit_to_budget)
        ("language", pa.string()),  # ISO 639-1 code, or 'und' (data_checks.languages)
        ("pii", pa.string()),  # JSON: kind -> count
        ("warnings", pa.string()),
        ("gx_result", pa.string()),
    ]
)
# What the first pass writes: a validated row, plus the raw record should the row be rejected.
CANDIDATE_SCHEMA = VALIDATED_SCHEMA.append(pa.field("mapping", pa.string())).append(pa.field("record", pa.string()))
REJECTED_SCHEMA = pa.schema(
    [
        *SOURCE_FIELDS,
        ("mapping", pa.string()),  # JSON
        ("record", pa.string()),  # JSON: the raw record, unchanged
        ("reason", pa.string()),
    ]
)


@dataclass
class Tally:
    """Figures of the validated rows, gathered batch by batch for the materialization's metadata."""

    rows: int = 0
    truncated: int = 0
    truncations: Counter = field(default_factory=Counter)
    """what was cut -> rows cut so"""
    longest: int = 0
    kinds: Counter = field(default_factory=Counter)

    def add(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows
        self.truncated += pc.sum(rows.column("truncated")).as_py() or 0
        self.truncations.update(cut for cut in rows.column("truncation").to_pylist() if cut)
        self.longest = max(self.longest, pc.max(rows.column("n_tokens")).as_py() or 0)
        self.kinds.update(rows.column("kind").to_pylist())


@dataclass
class Split:
    """What the second pass wrote: both record sets, the validated rows' figures, and the first
    rejected rows as 'file:line: reason'."""

    validated: RecordSet
    rejected: RecordSet
    tally: Tally
    examples: list[str]
    languages: Counter
    """rows per detected language, rejected rows included: the drop's language mix"""


def feature_workers(setting: int, rows: int) -> int:
    """How many processes compute the rows' features: `setting`, or for 0 (auto) every core when
    the drop has at least PARALLEL_MIN_ROWS rows, else none beside this one."""
    if setting:
        return setting
    return (os.cpu_count() or 1) if rows >= PARALLEL_MIN_ROWS else 1


def featured_batches(
    raw: RecordSet, tokenizer, rules: RuleValues, workers_setting: int = 0
) -> Iterator[tuple[list[dict], list[dict]]]:
    """Each raw batch (with its file's format) and its rows with every feature but `duplicate_of`,
    computed in worker processes for a large drop (`workers_setting`, validation.workers), in landing order."""
    batches = (with_format(batch, raw.summary.files) for batch in raw.batches())
    workers = feature_workers(workers_setting, raw.rows)
    if workers <= 1:
        yield from ((batch, rows_with_features(batch, tokenizer, rules)) for batch in batches)
        return
    yield from ordered_map(features_in_worker, batches, workers, start_feature_worker, (tokenizer, rules))


def features_pass(
    raw: RecordSet, tokenizer, rules: RuleValues, workers: int, features: FeaturesFile, scratch: Path
) -> tuple[RecordSet, PiiTally, Counter]:
    """First pass: every raw row as a conversation with its features and its raw `record`, written
    to a candidates file in `scratch`; the feature columns also go to the features file for Great
    Expectations. Returns the candidates, the personal-data tally and the conversion warnings."""
    pii, warnings = PiiTally(mode=rules.pii), Counter()
    seen = FirstSeen(scratch / "seen.sqlite")
    with RecordWriter(scratch / "candidates.parquet", CANDIDATE_SCHEMA, ("pii", "tools", "mapping", "record")) as out:
        for batch, rows in featured_batches(raw, tokenizer, rules, workers):
            mark_duplicates(rows, seen)  # here, in landing order: a row repeats an earlier one
            for row, source in zip(rows, batch):  # kept for the rows that will be rejected
                row["record"], row["mapping"] = source["record"], source["mapping"]
            features.store(ALL_ROWS, rows)
            out.write(rows)
            pii.add(rows)
            warnings.update(r["warnings"] for r in rows if r["warnings"])
    seen.close()
    return out.record_set(), pii, warnings


def split_table(candidates: pa.Table, reasons: dict[int, str], gx_result: str | None) -> tuple[pa.Table, pa.Table]:
    """(validated, rejected) rows of a candidates table: the validated ones with `gx_result`
    filled in, the rejected ones (those with a reason) with their `reason`."""
    ids = candidates.column("row_id").to_pylist()
    broke = pa.array([i in reasons for i in ids], pa.bool_())
    good = candidates.filter(pc.invert(broke))
    result = pa.array([gx_result] * good.num_rows, pa.string())
    good = good.set_column(good.schema.get_field_index("gx_result"), "gx_result", result)
    bad = candidates.filter(broke)
    bad_reasons = pa.array([reasons[i] for i in bad.column("row_id").to_pylist()], pa.string())
    return good, bad.append_column("reason", bad_reasons)


def split_pass(
    candidates: RecordSet, features: FeaturesFile, gx_result: str | None, state: StateStore, drop: str, run_id: str
) -> Split:
    """Second pass: each candidate to the validated or the rejected dataset of this run, by the
    features file's `reasons` table; validated rows name the Great Expectations result they passed.
    Rows pass through as stored (Arrow tables filtered, never decoded): they are already final."""
    validated_path = state.dataset_path("validated_records", drop, run_id)
    rejected_path = state.dataset_path("rejected_records", drop, run_id)
    examples: list[str] = []
    tally, languages = Tally(), Counter()
    with (
        RecordWriter(validated_path, VALIDATED_SCHEMA, ("pii", "tools")) as validated_out,
        RecordWriter(rejected_path, REJECTED_SCHEMA, ("record", "mapping")) as rejected_out,
    ):
        for table in candidates.tables():
            good, bad = split_table(table, features.reasons_of(table.column("row_id").to_pylist()), gx_result)
            validated_out.write_table(good)
            rejected_out.write_table(bad)
            tally.add(good)
            languages.update(table.column("language").to_pylist())
            head = bad.select(["source_file", "source_line", "reason"]).slice(0, EXAMPLE_ROWS - len(examples))
            examples += [f"{row_location(r)}: {r['reason']}" for r in head.to_pylist()]
    validated, rejected = validated_out.record_set(partition=drop), rejected_out.record_set(partition=drop)
    return Split(validated, rejected, tally, examples, languages)


def rejected_output(rejected: RecordSet, quality: dict) -> dg.Output:
    return dg.Output(
        rejected,
        output_name="rejected_records",
        metadata={
            **quality,
            "rows": len(rejected),
            "dataset": dg.MetadataValue.path(rejected.path),
            "reasons": dg.MetadataValue.md(reasons_table(rejected)),
        },
    )


def validated_output(split: Split, quality: dict, warnings: Counter, report: ValidationReport) -> dg.Output:
    return dg.Output(
        split.validated,
        output_name="validated_records",
        metadata={
            **quality,
            "rows": split.tally.rows,
            "longest_example_tokens": split.tally.longest,
            "kinds": dg.MetadataValue.json(dict(split.tally.kinds)),
            "conversion_warnings": dg.MetadataValue.json(dict(warnings)),
            "gx_result": dg.MetadataValue.path(report.result_path or ""),
            "dataset": dg.MetadataValue.path(split.validated.path),
        },
    )


@dg.multi_asset(
    outs={
        "validated_records": dg.AssetOut(
            # Not written for a drop that fails its gate: the step then fails on the blocking check.
            is_required=False,
            description="Raw rows that pass every expectation of the record suite, as conversations: "
            "`kind` (sft or preference), `messages` (system prompt filled in; tool calls, tool replies and "
            "turn weights kept), `tools` (the functions a row may call), `chosen`/`rejected` for "
            "preference pairs, `category` (the record's category field, when it has one), the measured "
            "`n_tokens`, `truncated` (cut to fit max_tokens) and `truncation` (what was cut), the detected "
            "`language` (ISO 639-1, or 'und'), `pii` counts, and their source.",
            kinds={"parquet"},
        ),
        "rejected_records": dg.AssetOut(
            description="Raw rows that broke at least one expectation: the raw `record`, its source file "
            "and line, and `reason` (each rule broken, with the offending value). Kept, never dropped.",
            kinds={"parquet"},
        ),
    },
    group_name="data",
    partitions_def=DROPS,
    check_specs=CHECK_SPECS,
)
def validated_records(
    context: dg.AssetExecutionContext,
    validation: ValidationConfig,
    raw_records: RecordSet,
    base_model: str,
    gx: GreatExpectations,
    models: ModelLoader,
    state: StateStore,
):
    """The quality gate for one drop, streamed in batches so memory stays bounded by the batch:

    1. each raw row becomes a conversation with the features the suite reads (written to a scratch
       Parquet file, features also to a SQLite table kept beside the Great Expectations result);
    2. Great Expectations validates that table (one result and Data Docs page for the whole drop);
    3. rows are split into validated and rejected by the rows each expectation reported, and the
       validated rows are validated again (the blocking suite check).

    Which rows broke which rule comes from each expectation's own query, streamed into a `reasons`
    table of the same SQLite file; nothing is held per row in memory.
    """
    drop, run_id = context.partition_key, context.run.run_id
    tokenizer = models.load_tokenizer(base_model)
    budget, rules = drop_rules(validation, models.config_of(base_model), tokenizer)
    context.log.info(f"max_tokens={budget.max_tokens} ({budget.source})")
    features = gx.features_file(f"{drop}-{short_run_id(run_id)}", FEATURE_SQL_COLUMNS)
    with tempfile.TemporaryDirectory(dir=state.scratch_dir()) as tmp:
        converted, pii, warnings = features_pass(raw_records, tokenizer, rules, validation.workers, features, Path(tmp))
        # Its page is written once the gate's verdict is known (gate_outcome).
        report = gx.validate_features(features, ALL_ROWS, suite_for(rules, ALL_ROWS), publish=False)
        rejected = rejections(features, report, rules)
        split = split_pass(converted, features, report.result_path, state, drop, run_id)
    suite_result = recheck_passing(gx, features, rules)
    rows_raw = len(raw_records)
    share_result = share_check_result(rows_raw, rejected, split.examples, validation.max_rejected_fraction, report)
    passed = suite_result.passed and share_result.passed
    status = drop_status(rows_raw, split.tally.rows, rejected, report, passed)
    figures = drop_quality(rows_raw, rejected, report, pii, status) | length_figures(budget, split.tally)
    quality = gate_outcome(gx, drop, report, share_result, figures | language_figures(split.languages), passed)
    yield rejected_output(split.rejected, quality)
    # A drop that fails the gate is held back: training never sees its rows; the failed checks say why.
    if passed:
        if not split.tally.rows:
            context.log.warning(f"Drop {drop} {status}")
        yield validated_output(split, quality, warnings, report)
    else:
        Path(split.validated.path).unlink(missing_ok=True)
        context.log.error(f"Drop {drop} held back from training: {share_result.description}")
    yield suite_result
    yield share_result


def length_figures(budget: LengthBudget, tally: Tally) -> dict:
    """How the drop's rows met the length budget, for the metadata: the budget and where it came
    from, and the rows cut to fit it, by what was cut (the rows left out are in `drop_quality`)."""
    return {
        "max_tokens": budget.max_tokens,
        "max_tokens_source": budget.source,
        "rows_truncated": tally.truncated,
        "truncations": dg.MetadataValue.json(dict(tally.truncations)),
    }


def language_figures(languages: Counter) -> dict:
    """The drop's language mix for the metadata: each language's rows and share (`language_mix`),
    and the counts as JSON (`languages`, also shown on the drop's Data Docs page)."""
    return {
        "language_mix": dg.MetadataValue.md(mix_table(languages)),
        "languages": dg.MetadataValue.json(dict(languages)),
    }


def gate_outcome(
    gx: GreatExpectations, drop: str, report: ValidationReport, share: dg.AssetCheckResult, quality: dict, passed: bool
) -> dict:
    """The drop's Data Docs page, written with the gate's verdict (a drop with a few rejected rows
    within the limit passes) and its language mix; returns the drop's quality metadata with the page's link."""
    verdict = f"{'passed the quality gate' if passed else 'held back from training'}: {share.description}"
    languages = quality.get("languages")
    gx.publish_verdict(report, f"Drop {drop}: record suite", passed, verdict, languages.value if languages else None)
    return {**quality, "data_docs": dg.MetadataValue.url(report.docs_url)}


def reasons_table(rejected: RecordSet, limit: int = 50) -> str:
    """The first `limit` rejected rows as a markdown table, for the materialization's metadata."""
    if not len(rejected):
        return "No row was rejected."
    head = next(rejected.batches(columns=["source_file", "source_line", "reason"], batch_size=limit))
    table = pd.DataFrame(head).to_markdown(index=False)
    more = len(rejected) - len(head)
    return table + (f"\n\n... and {more} more rows (all in the rejected_records dataset)." if more else "")
