"""validated_records and rejected_records: the raw rows split by the Great Expectations gate."""

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import DEFAULT_SYSTEM_PROMPT, SYSTEM, example_key, text, to_messages
from data_checks.record_checks import CHECK_SPECS, share_check_result, suite_check_result
from data_checks.record_suite import record_suite
from resources.expectations import GreatExpectations
from resources.models import ModelLoader


class ValidationConfig(dg.Config):
    max_tokens: int = Field(
        default=256,
        description="Longest formatted example (chat template applied, base tokenizer) a row may have. "
        "Longer rows are rejected, never truncated; training uses this as its max_length.",
    )
    max_rejected_fraction: float = Field(
        default=0.10,
        description="Largest share of raw rows that may be rejected before the run stops (blocking check).",
    )
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="System message for rows that carry none of their own.",
    )


def with_features(frame: pd.DataFrame, tokenizer, system_prompt: str) -> pd.DataFrame:
    """The rows plus the columns the suite checks: `system` filled, `n_tokens`, `duplicate_of`."""
    frame = frame.copy()
    frame[SYSTEM] = [text(s) if text(s).strip() else system_prompt for s in frame[SYSTEM]]
    records = frame.to_dict("records")
    rendered = [tokenizer.apply_chat_template(to_messages(r), tokenize=False) for r in records]
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    frame["n_tokens"] = [len(i) for i in ids]
    first_seen: dict[str, str] = {}
    duplicate_of = []
    for r in records:
        key = example_key(r)
        here = f"{r['source_file']}:{r['source_line']}"
        duplicate_of.append(first_seen.get(key))
        first_seen.setdefault(key, here)
    frame["duplicate_of"] = duplicate_of
    return frame


def reason_text(rules: list[str], row: dict) -> str:
    parts = [f"{rule} ({row['duplicate_of']})" if rule.startswith("duplicate") else rule for rule in rules]
    if any(rule.startswith("formatted example") for rule in rules):
        parts = [p + f": {row['n_tokens']} tokens" if p.startswith("formatted") else p for p in parts]
    return "; ".join(parts)


@dg.multi_asset(
    outs={
        "validated_records": dg.AssetOut(
            description="Raw rows that pass every expectation of the record suite, with `system` filled "
            "in and the measured `n_tokens` of their formatted example.",
            kinds={"pandas"},
        ),
        "rejected_records": dg.AssetOut(
            description="Raw rows that broke at least one expectation, each with `reason` (the rules "
            "broken, in words) and its source file and line. Kept, never dropped silently.",
            kinds={"pandas"},
        ),
    },
    group_name="data",
    check_specs=CHECK_SPECS,
)
def validated_records(
    context: dg.AssetExecutionContext,
    config: ValidationConfig,
    raw_records: pd.DataFrame,
    base_model: str,
    gx: GreatExpectations,
    models: ModelLoader,
):
    tokenizer = models.load_tokenizer(base_model)
    frame = with_features(raw_records, tokenizer, config.system_prompt)
    report = gx.validate(frame, record_suite(config.max_tokens))
    failing = report.failing_reasons()

    is_rejected = frame["row_id"].isin(list(failing))
    rejected = frame[is_rejected].copy()
    rejected["rules"] = [failing[i] for i in rejected["row_id"]]
    rejected["reason"] = [reason_text(r["rules"], r) for r in rejected.to_dict("records")]
    validated = frame[~is_rejected].reset_index(drop=True)

    recheck = gx.validate(validated, record_suite(config.max_tokens, name="validated_records"))
    examples = [f"{r['source_file']}:{r['source_line']}: {r['reason']}" for r in rejected.to_dict("records")]

    yield dg.Output(
        validated,
        output_name="validated_records",
        metadata={
            "rows": len(validated),
            "rows_raw": len(frame),
            "max_tokens": config.max_tokens,
            "longest_example_tokens": int(validated["n_tokens"].max()) if len(validated) else 0,
            "rows_per_drop": dg.MetadataValue.json(validated["drop"].value_counts().sort_index().to_dict()),
        },
    )
    yield dg.Output(
        rejected,
        output_name="rejected_records",
        metadata={
            "rows": len(rejected),
            "reasons": dg.MetadataValue.md(
                rejected[["source_file", "source_line", "reason"]].to_markdown(index=False)
                if len(rejected)
                else "No row was rejected."
            ),
        },
    )
    yield suite_check_result(recheck)
    yield share_check_result(len(frame), list(rejected["reason"]), examples, config.max_rejected_fraction)
