"""Asset checks on instruction_pairs: the split is disjoint (blocking), and the possible personal
data in the examples that train (a warning)."""

import sqlite3
import tempfile
from pathlib import Path

import dagster as dg

from assets.domain.chat import conversation_text, normalize, prompt_turns
from data_checks.record_checks import PII_CHECK, drop_metadata, personal_data_result
from resources.records import RecordSet
from resources.state import StateStore

# How many shared prompts the disjointness check shows (each can be long: whole prompts).
SHARED_EXAMPLES = 5


def shared_prompts(pairs: RecordSet, scratch: Path) -> tuple[int, int, list[str]]:
    """Prompts found on both sides of the split: (exactly, up to case and whitespace, examples).
    The prompts go to an on-disk table batch by batch, so any number of pairs can be compared."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        db = sqlite3.connect(Path(tmp) / "prompts.sqlite")
        db.execute("CREATE TABLE prompts (exact TEXT, normalized TEXT, side TEXT)")
        for batch in pairs.batches(columns=["messages", "split"]):
            rows = []
            for r in batch:
                if r["split"] in ("train", "eval"):
                    prompt = conversation_text(prompt_turns(r["messages"]))
                    rows.append((prompt, normalize(prompt), r["split"]))
            db.executemany("INSERT INTO prompts VALUES (?, ?, ?)", rows)

        def shared(column: str) -> list[str]:
            query = f"SELECT {column} FROM prompts GROUP BY {column} HAVING COUNT(DISTINCT side) > 1 ORDER BY {column}"
            return [value for (value,) in db.execute(query)]

        exact, normalized = shared("exact"), shared("normalized")
        db.close()
    return len(exact), len(normalized), normalized[:SHARED_EXAMPLES]


@dg.asset_check(asset="instruction_pairs", blocking=True)
def train_eval_disjoint(instruction_pairs: RecordSet, state: StateStore) -> dg.AssetCheckResult:
    """No prompt is on both sides of the split, compared exactly and case/whitespace-normalized.
    Rows excluded as repeats of an earlier drop are on neither side."""
    exact, normalized, examples = shared_prompts(instruction_pairs, state.scratch_dir())
    return dg.AssetCheckResult(
        passed=not exact and not normalized,
        metadata={
            "shared_exact": exact,
            "shared_normalized": normalized,
            "examples": dg.MetadataValue.json(examples),
        },
    )


# One verdict for what trains rather than one per drop: Dagster's check list shows the worst of a
# partitioned check's drops and its overview the latest drop's, which then disagree.
@dg.asset_check(asset="instruction_pairs", name=PII_CHECK)
def personal_data_scan(context: dg.AssetCheckExecutionContext, instruction_pairs: RecordSet) -> dg.AssetCheckResult:
    """Possible e-mail addresses, phone and card numbers in the examples that train, as each drop's
    scan found them: a warning while flagged rows are kept (set `pii: redact` to replace them). Each
    drop's own figures are in its partitions' metadata (`pii_rows`, `pii_counts`, `pii_examples`)."""
    drops = list(instruction_pairs.summary.drops)
    return personal_data_result(drop_metadata(context.instance, drops), drops)
