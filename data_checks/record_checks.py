"""Asset checks on validated_records, built from the Great Expectations results of its own run.

Both are blocking: a failure stops training on data that did not pass the gate.
"""

from collections import Counter

import dagster as dg

from resources.expectations import ValidationReport

SUITE_CHECK = "rows_pass_record_suite"
SHARE_CHECK = "rejected_share_within_limit"

CHECK_SPECS = [
    dg.AssetCheckSpec(
        SUITE_CHECK,
        asset="validated_records",
        blocking=True,
        description="Every validated row passes each expectation of the record suite (re-validated).",
    ),
    dg.AssetCheckSpec(
        SHARE_CHECK,
        asset="validated_records",
        blocking=True,
        description="The share of rejected rows stays within max_rejected_fraction.",
    ),
]


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
        },
    )


def share_check_result(
    rows_raw: int, reasons: list[str], examples: list[str], max_fraction: float
) -> dg.AssetCheckResult:
    share = len(reasons) / rows_raw if rows_raw else 0.0
    top = Counter(reasons).most_common(5)
    return dg.AssetCheckResult(
        check_name=SHARE_CHECK,
        passed=share <= max_fraction,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{len(reasons)} of {rows_raw} rows rejected ({share:.1%}); limit {max_fraction:.1%}"),
        metadata={
            "rejected_fraction": float(share),
            "max_rejected_fraction": float(max_fraction),
            "rows_rejected": len(reasons),
            "rows_raw": rows_raw,
            "top_reasons": dg.MetadataValue.json({reason: n for reason, n in top}),
            "example_rows": dg.MetadataValue.json(examples[:10]),
        },
    )
