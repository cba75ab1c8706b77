"""validated_records and rejected_records: the raw rows as chat examples, split by the quality gate."""

import itertools
import re
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import Field

from assets._chat_format import DEFAULT_SYSTEM_PROMPT, conversation_text, normalize, with_system
from assets._drops import DROPS
from assets._formats import to_example
from assets.raw_records import with_format
from data_checks.pii import scan
from data_checks.record_checks import CHECK_SPECS, PiiTally, share_check_result, suite_check_result
from data_checks.record_suite import record_suite
from resources.expectations import GreatExpectations, ValidationReport
from resources.models import ModelLoader
from resources.records import MESSAGES, FirstSeen, RecordSet, RecordWriter
from resources.state import StateStore

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


def with_features(raw: list[dict], tokenizer, config: ValidationConfig, seen: FirstSeen) -> list[dict]:
    """One row per raw row (with its file's `format`): the conversation (`kind`, `messages`,
    `chosen`, `rejected`) and the feature columns the suite checks, plus `pii` counts and conversion
    `warnings`. `seen` remembers earlier rows (earlier batches too) for duplicate detection."""
    rows = []
    for r in raw:
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
    measure(rows, tokenizer, config)
    mark_duplicates(rows, seen)
    return rows


def measure(rows: list[dict], tokenizer, config: ValidationConfig) -> None:
    """Set `n_tokens`, the token length of each formatted example (the longer answer for preference
    pairs), and `truncated`: over-long rows are cut to fit when config says so (`messages` replaced)."""
    conversations, owners = [], []
    for r in rows:
        r["n_tokens"], r["truncated"] = None, False
        if not r["messages"]:
            continue
        if r["kind"] == "preference":
            for answer in (r["chosen"], r["rejected"]):
                conversations.append(r["messages"] + [{"role": "assistant", "content": answer or ""}])
                owners.append(r)
        else:
            conversations.append(r["messages"])
            owners.append(r)
    for r, n in zip(owners, render_lengths(tokenizer, conversations)):
        r["n_tokens"] = max(r["n_tokens"] or 0, n)
    if config.truncate_over_long:
        for r in rows:
            if r["n_tokens"] is not None and r["n_tokens"] > config.max_tokens and r["kind"] == "sft":
                cut = truncate_last_user_turn(r["messages"], tokenizer, config.max_tokens, r["n_tokens"])
                if cut is not None:
                    r["messages"], r["n_tokens"], r["truncated"] = cut, render_lengths(tokenizer, [cut])[0], True


def mark_duplicates(rows: list[dict], seen: FirstSeen) -> None:
    """Set `duplicate_of`: the earlier row a row repeats (exactly, or up to case and whitespace),
    else None. Rows are compared with every row `seen` so far, in landing order; the first is kept."""
    texts = [conversation_text(r["messages"], r["chosen"], r["rejected"]) for r in rows]
    places = [f"{r['source_file']}:{r['source_line']}" for r in rows]
    exact = seen.check(texts, places)
    normal = seen.check(["\x00normalized\x00" + normalize(t) for t in texts], places)
    for r, same, similar in zip(rows, exact, normal):
        r["duplicate_of"] = (
            f"exact duplicate of {same}"
            if same
            else f"same as {similar} up to case and whitespace"
            if similar
            else None
        )


def record_reasons(db: sqlite3.Connection, report: ValidationReport) -> int:
    """Fill the `reasons` table of the features file: row id -> every rule the row broke, each with
    the row's value ('rule: detail; rule: detail'), from the rows each expectation's own query
    selects. Streamed through SQLite, so memory does not grow with the number of rejected rows.
    Returns how many rows were rejected."""
    db.execute("CREATE TABLE broken (row_id INTEGER, expectation INTEGER, value)")
    db.executemany("INSERT INTO broken VALUES (?, ?, ?)", report.failing_rows(db.cursor()))
    db.execute("CREATE TABLE reasons (row_id INTEGER PRIMARY KEY, reason TEXT NOT NULL)")

    def grouped() -> Iterator[tuple[int, str]]:
        rows = db.cursor().execute("SELECT row_id, expectation, value FROM broken ORDER BY row_id, expectation")
        for row_id, broken in itertools.groupby(rows, key=lambda r: r[0]):
            parts = []
            for _, index, value in broken:
                outcome = report.outcomes[index]
                parts.append(
                    f"{outcome.rule}: {value} tokens" if outcome.column == "n_tokens" else f"{outcome.rule}: {value}"
                )
            yield row_id, "; ".join(parts)

    db.executemany("INSERT INTO reasons VALUES (?, ?)", grouped())
    db.execute("DROP TABLE broken")
    db.commit()
    return db.execute("SELECT COUNT(*) FROM reasons").fetchone()[0]


def reasons_of(db: sqlite3.Connection, batch: list[dict]) -> dict[int, str]:
    """The rejection reasons of a batch's rows (row ids ascend through a drop, so one range query)."""
    if not batch:
        return {}
    ids = [r["row_id"] for r in batch]
    return dict(db.execute("SELECT row_id, reason FROM reasons WHERE row_id BETWEEN ? AND ?", (min(ids), max(ids))))


# The feature columns as Great Expectations reads them (same order as FEATURES).
FEATURES_TABLE = (
    "CREATE TABLE IF NOT EXISTS {name} (row_id INTEGER PRIMARY KEY, missing_fields TEXT, structure_error TEXT, "
    "hygiene_error TEXT, n_tokens INTEGER, duplicate_of TEXT)"
)

VALIDATED_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("drop", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("format", pa.string()),
        ("kind", pa.string()),
        ("messages", MESSAGES),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("missing_fields", pa.string()),
        ("structure_error", pa.string()),
        ("hygiene_error", pa.string()),
        ("n_tokens", pa.int64()),
        ("truncated", pa.bool_()),
        ("duplicate_of", pa.string()),
        ("pii", pa.string()),  # JSON: kind -> count
        ("warnings", pa.string()),
        ("gx_result", pa.string()),
    ]
)
# What the first pass writes: a validated row, plus the raw record should the row be rejected.
CANDIDATE_SCHEMA = VALIDATED_SCHEMA.append(pa.field("mapping", pa.string())).append(pa.field("record", pa.string()))
REJECTED_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("drop", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("format", pa.string()),
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
    longest: int = 0
    kinds: Counter = field(default_factory=Counter)

    def add(self, rows: list[dict]) -> None:
        self.rows += len(rows)
        self.truncated += sum(bool(r["truncated"]) for r in rows)
        self.longest = max([self.longest, *(r["n_tokens"] or 0 for r in rows)])
        self.kinds.update(r["kind"] for r in rows)


def store_features(db: sqlite3.Connection, table: str, rows: list[dict]) -> None:
    """Append the rows' feature columns to `table` (created on first use) for Great Expectations."""
    db.execute(FEATURES_TABLE.format(name=table))
    insert = f"INSERT INTO {table} VALUES ({', '.join('?' * (len(FEATURES) + 1))})"
    db.executemany(insert, [(r["row_id"], *(r[f] for f in FEATURES)) for r in rows])


def features_pass(
    raw: RecordSet, tokenizer, config: ValidationConfig, seen: FirstSeen, db: sqlite3.Connection, out: RecordWriter
) -> tuple["PiiTally", Counter]:
    """First pass: every raw row as a conversation with its features and its raw `record`, written
    to `out`; the feature columns also go to the `records` table of `db` for Great Expectations.
    Returns the personal-data tally and the conversion warnings of all rows."""
    pii, warnings = PiiTally(), Counter()
    for batch in raw.batches():
        batch = with_format(batch, raw.meta["files"])
        rows = with_features(batch, tokenizer, config, seen)
        for row, source in zip(rows, batch):  # kept for the rows that will be rejected
            row["record"], row["mapping"] = source["record"], source["mapping"]
        store_features(db, "records", rows)
        out.write(rows)
        pii.add(rows)
        warnings.update(r["warnings"] for r in rows if r["warnings"])
    db.commit()
    return pii, warnings


@dg.multi_asset(
    outs={
        "validated_records": dg.AssetOut(
            # Not written for a drop that fails its gate: the step then fails on the blocking check.
            is_required=False,
            description="Raw rows that pass every expectation of the record suite, as conversations: "
            "`kind` (sft or preference), `messages` (system prompt filled in), `chosen`/`rejected` for "
            "preference pairs, the measured `n_tokens`, `truncated`, `pii` counts, and their source.",
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
    run_name = f"{drop}-{run_id[:8]}"
    results = Path(gx.project_dir) / "results" / run_name
    results.mkdir(parents=True, exist_ok=True)
    (results / "features.sqlite").unlink(missing_ok=True)  # a retried step starts afresh
    db = sqlite3.connect(results / "features.sqlite")
    with tempfile.TemporaryDirectory(dir=state.scratch_dir()) as tmp:
        seen = FirstSeen(Path(tmp) / "seen.sqlite")
        with RecordWriter(Path(tmp) / "candidates.parquet", CANDIDATE_SCHEMA, ("pii", "mapping", "record")) as out:
            pii, warnings = features_pass(raw_records, tokenizer, validation, seen, db, out)
        seen.close()
        report = gx.validate_table(
            results / "features.sqlite", "records", record_suite(validation.max_tokens), run_name
        )
        rows_rejected = record_reasons(db, report)

        # Second pass: each row to the validated or the rejected file, by the reasons table.
        examples: list[str] = []
        tally = Tally()
        validated_path = state.dataset_path("validated_records", drop, run_id)
        rejected_path = state.dataset_path("rejected_records", drop, run_id)
        with (
            RecordWriter(validated_path, VALIDATED_SCHEMA, ("pii",)) as validated_out,
            RecordWriter(rejected_path, REJECTED_SCHEMA, ("record", "mapping")) as rejected_out,
        ):
            for batch in out.record_set().batches():
                reasons = reasons_of(db, batch) if rows_rejected else {}
                good = [{**r, "gx_result": report.result_path} for r in batch if r["row_id"] not in reasons]
                bad = [{**r, "reason": reasons[r["row_id"]]} for r in batch if r["row_id"] in reasons]
                validated_out.write(good)
                rejected_out.write(bad)
                tally.add(good)
                examples += [f"{r['source_file']}:{r['source_line']}: {r['reason']}" for r in bad[: 10 - len(examples)]]
        rejected = rejected_out.record_set(partition=drop)
        db.execute(FEATURES_TABLE.format(name="validated_records"))
        db.execute(
            "INSERT INTO validated_records SELECT * FROM records WHERE row_id NOT IN (SELECT row_id FROM reasons)"
        )
        db.commit()
        db.close()
    recheck = gx.validate_table(
        results / "features.sqlite",
        "validated_records",
        record_suite(validation.max_tokens, name="validated_records"),
        run_name,
    )
    suite_result = suite_check_result(recheck)
    share_result = share_check_result(
        len(raw_records), rows_rejected, examples, validation.max_rejected_fraction, report
    )

    yield dg.Output(
        rejected,
        output_name="rejected_records",
        metadata={
            "rows": len(rejected),
            "dataset": dg.MetadataValue.path(rejected.path),
            "reasons": dg.MetadataValue.md(reasons_table(rejected)),
        },
    )
    # A drop that fails the gate is held back: its validated rows are not handed on, so training
    # never sees them; the failed checks below say why.
    if suite_result.passed and share_result.passed:
        yield dg.Output(
            validated_out.record_set(partition=drop),
            output_name="validated_records",
            metadata={
                "rows": tally.rows,
                "rows_raw": len(raw_records),
                "rows_truncated": tally.truncated,
                "max_tokens": validation.max_tokens,
                "longest_example_tokens": tally.longest,
                "kinds": dg.MetadataValue.json(dict(tally.kinds)),
                "conversion_warnings": dg.MetadataValue.json(dict(warnings)),
                "data_docs": dg.MetadataValue.url(report.docs_url or ""),
                "gx_result": dg.MetadataValue.path(report.result_path or ""),
                "dataset": dg.MetadataValue.path(str(validated_path)),
            },
        )
    else:
        validated_path.unlink(missing_ok=True)
        context.log.error(f"Drop {drop} held back from training: {share_result.description}")
    yield suite_result
    yield share_result
    yield pii.result(validation.pii)


def reasons_table(rejected: RecordSet, limit: int = 50) -> str:
    """The first `limit` rejected rows as a markdown table, for the materialization's metadata."""
    if not len(rejected):
        return "No row was rejected."
    head = next(rejected.batches(columns=["source_file", "source_line", "reason"], batch_size=limit))
    table = pd.DataFrame(head).to_markdown(index=False)
    more = len(rejected) - len(head)
    return table + (f"\n\n... and {more} more rows (all in the rejected_records dataset)." if more else "")
