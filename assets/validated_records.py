"""validated_records and rejected_records: the raw rows as chat examples, split by the quality gate."""

import re
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import DEFAULT_SYSTEM_PROMPT, conversation_text, normalize, with_system
from assets._drops import DROPS
from assets._formats import to_example
from data_checks.pii import scan
from data_checks.record_checks import CHECK_SPECS, pii_check_result, share_check_result, suite_check_result
from data_checks.record_suite import record_suite
from resources.expectations import GreatExpectations, ValidationReport
from resources.models import ModelLoader

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Features the suite reads; rows keep them so a rejection can be explained from the row alone.
FEATURES = ["missing_fields", "structure_error", "hygiene_error", "n_tokens", "duplicate_of"]


class ValidationConfig(dg.ConfigurableResource):
    max_tokens: int = Field(
        default=256,
        description="Longest formatted example (chat template applied, base tokenizer) a row may have. "
        "Longer rows are rejected unless truncate_over_long; training uses the longest kept row as max_length.",
    )
    truncate_over_long: bool = Field(
        default=False,
        description="Cut the last user turn of over-long rows to fit max_tokens instead of rejecting them "
        "(the answer is never cut). Truncated rows are counted.",
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


def structure_problem(messages: list[dict], kind: str) -> str | None:
    """What is wrong with a conversation's shape, or None: known roles are checked on conversion;
    here, one leading system message, user/assistant alternation, the right last turn, no empty turn."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return "no user or assistant turns"
    expected = "user"
    for i, m in enumerate(turns, start=1):
        if m["role"] == "system":
            return f"turn {i} is a system message; only the first message may be one"
        if m["role"] != expected:
            return f"turn {i} is from the {m['role']}, expected the {expected} (turns must alternate)"
        expected = "assistant" if expected == "user" else "user"
    if kind == "sft" and turns[-1]["role"] != "assistant":
        return "last turn is from the user; a training example ends with the assistant's answer"
    if kind == "preference" and turns[-1]["role"] != "user":
        return "a preference prompt must end with a user turn"
    for i, m in enumerate(turns, start=1):
        if not m["content"]:
            return f"turn {i} ({m['role']}) is empty"
    return None


def hygiene_problem(texts: list[str]) -> str | None:
    for text in texts:
        if "\ufffd" in text:
            return "U+FFFD replacement character (text was decoded with the wrong encoding upstream)"
        if m := CONTROL_CHARS.search(text):
            return f"control character U+{ord(m.group()):04X}"
    return None


def render_lengths(tokenizer, conversations: list[list[dict]], chunk: int = 2048) -> list[int]:
    """Token count of each conversation with the chat template applied. Tokenized in chunks and
    only the lengths kept: the token ids of a large landing would not fit in memory at once."""
    lengths = []
    for start in range(0, len(conversations), chunk):
        rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + chunk]]
        lengths += [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    return lengths


def truncate_last_user_turn(messages, tokenizer, max_tokens: int, n_tokens: int):
    """`messages` with the last user turn cut so the example fits, or None when it cannot fit."""
    index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if index is None:
        return None
    ids = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - (n_tokens - max_tokens)
    while keep > 0:
        cut = [dict(m) for m in messages]
        cut[index]["content"] = tokenizer.decode(ids[:keep]).strip()
        if render_lengths(tokenizer, [cut])[0] <= max_tokens:
            return cut
        keep -= 4  # re-tokenizing at the cut can add a token or two
    return None


def with_features(raw: pd.DataFrame, tokenizer, config: ValidationConfig) -> pd.DataFrame:
    """One row per raw row: the conversation (`kind`, `messages`, `chosen`, `rejected`) and the
    feature columns the suite checks, plus `pii` counts and conversion `warnings`."""
    rows = []
    for r in raw.to_dict("records"):
        kind = "preference" if r["format"] == "preference" else "sft"
        ex = to_example(r["record"], r["format"], r.get("mapping"))
        pii: dict[str, int] = {}

        def clean(text, pii=pii):
            redacted, counts = scan(text)
            for k, n in counts.items():
                pii[k] = pii.get(k, 0) + n
            return redacted if config.pii == "redact" else text

        messages = [{"role": m["role"], "content": clean(m["content"])} for m in ex.messages]
        chosen = None if ex.chosen is None else clean(ex.chosen)
        rejected = None if ex.rejected is None else clean(ex.rejected)
        messages = with_system(messages, config.system_prompt) if messages else messages
        texts = [m["content"] for m in messages] + [t for t in (chosen, rejected) if t is not None]
        structure = ex.problems[0] if ex.problems else None
        if structure is None and not ex.missing:
            structure = structure_problem(messages, kind)
        rows.append(
            {
                **{k: r[k] for k in ("row_id", "drop", "source_file", "source_line", "format")},
                "kind": kind,
                "messages": messages,
                "chosen": chosen,
                "rejected": rejected,
                "missing_fields": ", ".join(ex.missing) or None,
                "structure_error": structure,
                "hygiene_error": hygiene_problem(texts),
                "pii": pii or None,
                "warnings": ", ".join(sorted(set(ex.warnings))) or None,
            }
        )
    frame = pd.DataFrame(rows)
    frame["n_tokens"], frame["truncated"] = measure(frame, tokenizer, config)
    frame["duplicate_of"] = duplicates(frame)
    return frame


def measure(frame: pd.DataFrame, tokenizer, config: ValidationConfig):
    """Token length of each formatted example (the longer answer for preference pairs); over-long
    rows cut to fit when config says so (their `messages` replaced, `truncated` set)."""
    lengths: list[int | None] = [None] * len(frame)
    truncated = [False] * len(frame)
    conversations, owners = [], []
    for i, r in enumerate(frame.to_dict("records")):
        if not r["messages"]:
            continue
        if r["kind"] == "preference":
            for answer in (r["chosen"], r["rejected"]):
                conversations.append(r["messages"] + [{"role": "assistant", "content": answer or ""}])
                owners.append(i)
        else:
            conversations.append(r["messages"])
            owners.append(i)
    for i, n in zip(owners, render_lengths(tokenizer, conversations)):
        lengths[i] = max(lengths[i] or 0, n)
    if config.truncate_over_long:
        for i, n in enumerate(lengths):
            if n is not None and n > config.max_tokens and frame.at[i, "kind"] == "sft":
                cut = truncate_last_user_turn(frame.at[i, "messages"], tokenizer, config.max_tokens, n)
                if cut is not None:
                    frame.at[i, "messages"] = cut
                    lengths[i], truncated[i] = render_lengths(tokenizer, [cut])[0], True
    return lengths, truncated


def duplicates(frame: pd.DataFrame) -> list[str | None]:
    """For each row, the earlier row it repeats (exactly, or up to case and whitespace), else None.
    Rows are compared across all files and drops, in landing order; the first occurrence is kept."""
    exact_seen: dict[str, str] = {}
    normal_seen: dict[str, str] = {}
    found = []
    for r in frame.to_dict("records"):
        text = conversation_text(r["messages"], r["chosen"], r["rejected"])
        here = f"{r['source_file']}:{r['source_line']}"
        if text in exact_seen:
            found.append(f"exact duplicate of {exact_seen[text]}")
        elif normalize(text) in normal_seen:
            found.append(f"same as {normal_seen[normalize(text)]} up to case and whitespace")
        else:
            found.append(None)
        exact_seen.setdefault(text, here)
        normal_seen.setdefault(normalize(text), here)
    return found


def rejection_reasons(report: ValidationReport, frame: pd.DataFrame) -> dict[int, str]:
    """Row id -> every rule the row broke, each with the row's value: 'rule: detail; rule: detail'."""
    by_id = frame.set_index("row_id")
    reasons = {}
    for row_id, outcomes in report.failing().items():
        parts = []
        for o in outcomes:
            value = by_id.at[row_id, o.column]
            parts.append(f"{o.rule}: {value} tokens" if o.column == "n_tokens" else f"{o.rule}: {value}")
        reasons[row_id] = "; ".join(parts)
    return reasons


@dg.multi_asset(
    outs={
        "validated_records": dg.AssetOut(
            description="Raw rows that pass every expectation of the record suite, as conversations: "
            "`kind` (sft or preference), `messages` (system prompt filled in), `chosen`/`rejected` for "
            "preference pairs, the measured `n_tokens`, `truncated`, `pii` counts, and their source.",
            kinds={"pandas"},
        ),
        "rejected_records": dg.AssetOut(
            description="Raw rows that broke at least one expectation: the raw `record`, its source file "
            "and line, and `reason` (each rule broken, with the offending value). Kept, never dropped.",
            kinds={"pandas"},
        ),
    },
    group_name="data",
    partitions_def=DROPS,
    check_specs=CHECK_SPECS,
)
def validated_records(
    context: dg.AssetExecutionContext,
    validation: ValidationConfig,
    raw_records: pd.DataFrame,
    base_model: str,
    gx: GreatExpectations,
    models: ModelLoader,
):
    tokenizer = models.load_tokenizer(base_model)
    frame = with_features(raw_records, tokenizer, validation)
    run_name = f"{context.partition_key}-{context.run.run_id[:8]}"
    report = gx.validate(frame[["row_id", *FEATURES]], record_suite(validation.max_tokens), run_name=run_name)
    reasons = rejection_reasons(report, frame)

    is_rejected = frame["row_id"].isin(list(reasons))
    rejected = raw_records[raw_records["row_id"].isin(list(reasons))].copy()
    rejected["reason"] = [reasons[i] for i in rejected["row_id"]]
    validated = frame[~is_rejected].reset_index(drop=True)
    validated["gx_result"] = report.result_path
    recheck = gx.validate(
        validated[["row_id", *FEATURES]],
        record_suite(validation.max_tokens, name="validated_records"),
        run_name=run_name,
    )
    examples = [f"{r['source_file']}:{r['source_line']}: {r['reason']}" for r in rejected.to_dict("records")]
    suite_result = suite_check_result(recheck)
    share_result = share_check_result(len(frame), reasons, examples, validation.max_rejected_fraction, report)

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
    # A drop that fails the gate is held back: its validated rows are not written, so training
    # never sees them; the failed checks below say why.
    if suite_result.passed and share_result.passed:
        yield dg.Output(
            validated,
            output_name="validated_records",
            metadata={
                "rows": len(validated),
                "rows_raw": len(frame),
                "rows_truncated": int(validated["truncated"].sum()),
                "max_tokens": validation.max_tokens,
                "longest_example_tokens": int(validated["n_tokens"].max()) if len(validated) else 0,
                "kinds": dg.MetadataValue.json(validated["kind"].value_counts().to_dict()),
                "conversion_warnings": dg.MetadataValue.json(frame["warnings"].dropna().value_counts().to_dict()),
                "data_docs": dg.MetadataValue.url(report.docs_url or ""),
                "gx_result": dg.MetadataValue.path(report.result_path or ""),
            },
        )
    else:
        context.log.error(f"Drop {context.partition_key} held back from training: {share_result.description}")
    yield suite_result
    yield share_result
    yield pii_check_result(frame, validation.pii)
