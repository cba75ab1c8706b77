"""Asset checks on validated_records, built from the Great Expectations results of its own run.

The suite and share checks are blocking: a failure stops training on data that did not pass the
gate. They are partitioned like the asset, so each drop keeps its own verdicts (the partitions view of
a check). `drop_quality` is the same drop's figures in one place, for the materializations' metadata,
among them the possible personal data each drop's scan found. The personal-data scan only warns: it
flags rows for a person to look at, once for the examples that train (`personal_data_result`, the
check `personal_data_scan` on `instruction_pairs`), so the check list and the check's latest execution
say the same thing (a partitioned warning reads "Failed" in the list, for one drop, beside a later
drop's "Passed").
"""

import warnings
from collections import Counter
from dataclasses import dataclass, field

import dagster as dg

from assets.domain.drops import DROPS
from assets.domain.figures import counts_table, shown, table_counts
from assets.domain.rows import row_location
from assets.domain.values import EXAMPLE_ROWS
from data_checks.record_suite import MODED_COLUMNS, NOT_BAD_DATA, OFF_MARK
from resources.expectations import ValidationReport

SUITE_CHECK = "rows_pass_record_suite"
SHARE_CHECK = "rejected_share_within_limit"
PII_CHECK = "personal_data_scan"
# How many of the most frequent rules the share check lists.
TOP_REASONS = 5
# A drop's status when its rows reach training (`drop_status`).
IN_TRAINING = "passed: in training"

# Partitioned checks (one verdict per drop) are a preview API in Dagster 1.13, used on purpose.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECK_SPECS = [
        dg.AssetCheckSpec(
            SUITE_CHECK,
            asset="validated_records",
            partitions_def=DROPS,
            blocking=True,
            description="Every validated row passes each expectation of the record suite (re-validated).",
        ),
        dg.AssetCheckSpec(
            SHARE_CHECK,
            asset="validated_records",
            partitions_def=DROPS,
            blocking=True,
            description="The share of rejected rows stays within max_rejected_fraction.",
        ),
    ]
# Each drop's quality figures (`drop_quality`) are the metadata of its rejected_records partition,
# written whether the drop passed or was held back.
REJECTED = dg.AssetKey("rejected_records")


def expectation_table(report: ValidationReport) -> str:
    lines = ["| expectation | column | rule | failing rows | of | ok |", "|---|---|---|---|---|---|"]
    for o in report.outcomes:
        lines.append(
            f"| {o.expectation} | {o.column or ''} | {o.rule} | {o.unexpected_count} | "
            f"{o.element_count} | {'yes' if o.success else 'no'} |"
        )
    return "\n".join(lines)


def suite_check_result(report: ValidationReport) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=SUITE_CHECK,
        passed=report.success,
        metadata={
            "expectations": dg.MetadataValue.md(expectation_table(report)),
            "failing_expectations": sum(not o.success for o in report.outcomes),
            "data_docs": dg.MetadataValue.url(report.docs_url or ""),
        },
    )


def share_check_result(
    rows_raw: int, rejected: "Rejections", examples: list[str], max_fraction: float, report: ValidationReport
) -> dg.AssetCheckResult:
    """The share of rows rejected as bad data against its limit; the metadata shows both, the rows
    left out for length (out of training but not counted: they are not bad data), the top rules of
    the bad data and example rows. A failing check's description names the top rules."""
    share = rejected.bad / rows_raw if rows_raw else 0.0
    passed = share <= max_fraction
    description = f"{rejected.bad} of {rows_raw} rows rejected as bad data ({share:.1%}); limit {max_fraction:.1%}"
    if not passed:
        description += f"; top reasons: {reasons_line(top_reasons(report, bad_only=True))}"
    if rejected.over_long:
        description += f". {rejected.over_long} rows left out of training and not counted: {rejected.over_long_rule}"
    return dg.AssetCheckResult(
        check_name=SHARE_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "rejected_fraction": shown(float(share)),
            "max_rejected_fraction": float(max_fraction),
            "rows_rejected": rejected.bad,
            "rows_left_out": rejected.over_long,
            "rows_raw": rows_raw,
            "top_reasons": dg.MetadataValue.md(counts_table(top_reasons(report, bad_only=True), "rule")),
            "example_rows": dg.MetadataValue.json(examples[:EXAMPLE_ROWS]),
            "expectations": dg.MetadataValue.md(expectation_table(report)),
            "data_docs": dg.MetadataValue.url(report.docs_url or ""),
        },
    )


def top_reasons(report: ValidationReport, bad_only: bool = False) -> dict[str, int]:
    """The rules most rows broke, with how many rows broke each (`bad_only`: the rules that make a
    row bad data, not the length budget's nor the warnings')."""
    rules = Counter()
    for index, outcome in enumerate(report.outcomes):
        if not (bad_only and (index in NOT_BAD_DATA or outcome.warn)):
            rules[outcome.rule] += outcome.unexpected_count
    return {rule: n for rule, n in rules.most_common(TOP_REASONS) if n}


def answer_quality_table(report: ValidationReport) -> str:
    """Each answer-quality rule of a drop's validation: its mode and the rows that broke it."""
    lines = ["| rule | mode | rows |", "|---|---|---|"]
    for o in report.outcomes:
        if o.column in MODED_COLUMNS:
            mode = "off" if o.rule.endswith(OFF_MARK) else "warn" if o.warn else "reject"
            lines.append(f"| {o.rule} | {mode} | {o.unexpected_count} |")
    return "\n".join(lines)


def answer_warnings(report: ValidationReport) -> dict[str, int]:
    """The warnings of a drop's validation (rules in warn mode), with the rows kept that broke each."""
    return {o.rule: o.unexpected_count for o in report.outcomes if o.warn and o.unexpected_count}


def reasons_line(reasons: dict[str, int]) -> str:
    return "; ".join(f"{rule} ({n})" for rule, n in reasons.items()) or "-"


def drop_status(rows_raw: int, rows_valid: int, rejected: "Rejections", report: ValidationReport, passed: bool) -> str:
    """One drop's verdict in words, naming the cause when none of its rows reaches training: all
    rejected as bad data (with the top rules), or all left out for length (with the rule)."""
    if not passed:
        if rejected.bad:
            return (
                f"held back: failed the quality gate: {rejected.bad} of {rows_raw} rows rejected as bad data "
                f"({reasons_line(top_reasons(report, bad_only=True))})"
            )
        return "held back: failed the quality gate"
    if rows_valid or not rows_raw:
        return IN_TRAINING
    if rejected.over_long == rows_raw:
        return f"passed, nothing to train on: all {rows_raw} rows left out: {rejected.over_long_rule}"
    bad = reasons_line(top_reasons(report, bad_only=True))
    return (
        f"passed, nothing to train on: {rejected.bad} rows rejected as bad data ({bad}), "
        f"{rejected.over_long} left out: {rejected.over_long_rule}"
    )


def drop_quality(rows_raw: int, rejected: "Rejections", report: ValidationReport, pii: "PiiTally", status: str) -> dict:
    """One drop's data quality as metadata of its partitions: its status (`drop_status`), its rows,
    those rejected as bad data, their share and top rules, the rows left out for length (good data
    over the budget, not counted as rejected) and why, each answer-quality rule's mode and rows
    (`answer_quality`), the rows kept with a warning per rule (`rows_warned`), and the possible
    personal data its scan found (rows, counts per kind, what became of them, the first rows)."""
    share = rejected.bad / rows_raw if rows_raw else 0.0
    return {
        "drop_status": status,
        "rows_raw": rows_raw,
        "rows_rejected": rejected.bad,
        "rejected_share": shown(share),
        "top_reasons": dg.MetadataValue.md(counts_table(top_reasons(report, bad_only=True), "rule")),
        "rows_left_out": rejected.over_long,
        "left_out_reason": rejected.over_long_rule if rejected.over_long else "",
        "answer_quality": dg.MetadataValue.md(answer_quality_table(report)),
        "rows_warned": dg.MetadataValue.json(answer_warnings(report)),
        "pii_rows": pii.flagged,
        "pii_counts": dg.MetadataValue.md(counts_table(dict(pii.totals), "kind", "found")),
        "pii_mode": pii.mode,
        "pii_examples": dg.MetadataValue.json(pii.examples),
    }


def drop_metadata(instance: dg.DagsterInstance, drops: list[str]) -> dict[str, dict | None]:
    """Each drop's data quality (`drop_quality`) from its latest validation, as plain values; None
    for a drop never validated."""
    found = {}
    for drop in drops:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=REJECTED, asset_partitions=[drop]), limit=1
        ).records
        metadata = records[0].asset_materialization.metadata if records else None
        found[drop] = None if metadata is None else {k: v.value for k, v in metadata.items()}
    return found


@dataclass(frozen=True)
class Rejections:
    """A drop's rejected rows: all of them, and those left out only for being over-long (good
    data over the length budget), which do not count against `max_rejected_fraction`, with the
    rule they broke (`record_suite.too_long_rule`)."""

    total: int
    over_long: int = 0
    over_long_rule: str = "longer than max_tokens"

    @property
    def bad(self) -> int:
        return self.total - self.over_long


@dataclass
class PiiTally:
    """Possible personal data over a drop's rows, gathered batch by batch: rows flagged, counts per
    kind, and the first example rows; `mode` says what became of it (`validation.pii`)."""

    mode: str = "warn"
    flagged: int = 0
    totals: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, rows: list[dict]) -> "PiiTally":
        for r in rows:
            if r["pii"]:
                self.flagged += 1
                self.totals.update(r["pii"])
                if len(self.examples) < EXAMPLE_ROWS:
                    self.examples.append(f"{row_location(r)}: {', '.join(sorted(r['pii']))}")
        return self


def personal_data_result(quality: dict[str, dict | None], drops: list[str] | tuple) -> dg.AssetCheckResult:
    """The personal-data warning for the examples that train: the rows each of `drops` flagged
    (from its `drop_quality`), kept or redacted. Fails (as a warning) when flagged rows were kept."""
    found = {d: q for d in drops if (q := quality.get(d)) and q.get("pii_rows")}
    kept = {d: q["pii_rows"] for d, q in found.items() if q.get("pii_mode", "warn") != "redact"}
    lines = ["| drop | rows flagged | found | handling | first rows |", "|---|---|---|---|---|"]
    lines += [
        f"| {d} | {q['pii_rows']} | {pii_kinds(q)} | {'kept' if d in kept else 'redacted'} | "
        f"{'<br>'.join(q.get('pii_examples') or [])} |"
        for d, q in found.items()
    ]
    return dg.AssetCheckResult(
        check_name=PII_CHECK,
        passed=not kept,
        severity=dg.AssetCheckSeverity.WARN,
        description=personal_data_line(found, kept, len(drops)),
        metadata={
            "rows_flagged": sum(q["pii_rows"] for q in found.values()),
            "rows_kept": sum(kept.values()),
            "drops": dg.MetadataValue.md("\n".join(lines) if found else "-"),
        },
    )


def personal_data_line(found: dict[str, dict], kept: dict[str, int], drops: int) -> str:
    """The personal-data check's verdict in one sentence, naming each drop's flagged rows."""
    if not found:
        return f"no possible personal data found in the {drops} drops that train"
    flagged, n_kept = sum(q["pii_rows"] for q in found.values()), sum(kept.values())
    where = "; ".join(f"drop {d}: {q['pii_rows']} rows, {pii_kinds(q)}" for d, q in found.items())
    line = f"{flagged} rows with possible personal data in the examples that train ({where}): "
    if n_kept in (0, flagged):
        return line + ("kept (set pii: redact to replace them)" if n_kept else "redacted")
    return line + f"{n_kept} kept (set pii: redact to replace them), {flagged - n_kept} redacted"


def pii_kinds(quality: dict) -> str:
    """A drop's personal data by kind, in one line: 'email 1, phone 1'."""
    return ", ".join(f"{kind} {n}" for kind, n in table_counts(quality.get("pii_counts")).items()) or "-"
