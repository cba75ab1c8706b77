"""instruction_pairs: validated rows as chat examples, split into train and eval."""

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.domain.chat import conversation_text, normalize, prompt_hash
from assets.domain.drops import DROPS, by_drop
from assets.domain.figures import table_counts
from assets.domain.mixture import SELECTORS, MixingRule, given, mixing_hash, mixture_markdown, mixture_table
from assets.domain.rows import row_location
from assets.domain.tool_calls import reply_text
from assets.domain.values import EXAMPLE_ROWS, PairsSummary
from data_checks.record_checks import IN_TRAINING, drop_metadata
from resources.records import MESSAGES, FirstSeen, RecordSet, RecordWriter
from resources.state import StateStore

SPLIT_BUCKETS = 10_000
# Hex digits of a prompt's hash read as the split bucket: 48 bits, far more than SPLIT_BUCKETS.
SPLIT_DIGEST_CHARS = 12
# Bytes of each example's digest summed into a set hash (the sum is kept modulo 2**128).
SET_DIGEST_BYTES = 16
# Hex digits naming a train or eval set: 64 bits, short enough for run params and model cards.
SET_HASH_CHARS = 16

# Retrain when any validated drop (or the base model) changed since this asset last ran, once
# nothing upstream is still running. Held-back drops are missing partitions and must not block it,
# which is why this is not AutomationCondition.eager().
RETRAIN_ON_NEW_DATA = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


class SplitConfig(dg.ConfigurableResource):
    """How validated rows are split into train and eval (by a hash of the normalized prompt, so the
    split is stable as drops arrive) and which drops are used. The `split` section of the preset."""

    eval_fraction: float = Field(
        default=0.15, description="Share of examples held out for evaluation, chosen by content hash."
    )
    split_salt: str = Field(
        default="",
        description="Changes which examples land in eval. Leave empty so the split stays stable "
        "across runs and data drops: an eval example never moves into training.",
    )
    drops_window: int = Field(
        default=0, description="Train and evaluate on the latest N validated drops only (0: all drops to date)."
    )
    mixing: list[MixingRule] = Field(
        default=[],
        description="Mixing weights (assets/domain/mixture.py): rules, each a pattern on one of drop, source_file "
        "or format and a weight; a train row is trained on (the product of its rules' weights) times per pass, "
        "sampled from training.seed. Weight 0 keeps a row in the train split but never samples it. Empty: "
        "every train row once.",
    )


def split_of(prompt_digest: str, eval_fraction: float, salt: str = "") -> str:
    """'eval' or 'train', a pure function of the normalized prompt's hash (never of row order)."""
    digest = hashlib.sha256((salt + prompt_digest).encode()).hexdigest()
    return "eval" if int(digest[:SPLIT_DIGEST_CHARS], 16) % SPLIT_BUCKETS < eval_fraction * SPLIT_BUCKETS else "train"


# The validated columns a pair is built from (the features, PII counts and warnings are not read).
PAIR_SOURCE_COLUMNS = [
    *("kind", "messages", "chosen", "rejected", "tools", "n_tokens"),
    *("drop", "source_file", "source_line", "format", "gx_result", "category"),
]


def build_pairs(validated: list[dict], eval_fraction: float, salt: str = "") -> list[dict]:
    """One pair per validated row: the conversation, its `example_id` (hash of the normalized
    prompt), its `split` by that hash, its source (with its file's `format`) and its `category` (None when
    it has none)."""
    pairs = []
    for r in validated:
        example_id = prompt_hash(r["messages"])
        pairs.append(
            {
                "example_id": example_id,
                **{k: r[k] for k in ("kind", "messages", "chosen", "rejected")},
                "tools": r.get("tools"),
                "split": split_of(example_id, eval_fraction, salt),
                **{k: r[k] for k in ("n_tokens", "drop", "source_file", "source_line")},
                "gx_result": r.get("gx_result"),
                "excluded_reason": None,
                "category": r.get("category"),  # absent from drops validated before categories were kept
                "format": r.get("format"),  # the record format of the row's file, which mixing rules may select
            }
        )
    return pairs


def drops_to_use(
    per_drop: dict, window: int = 0, statuses: dict[str, str] | None = None
) -> list[tuple[str, RecordSet]]:
    """The validated rows of the drops that passed their gate (missing partitions are held-back
    drops), oldest drop first, limited to the latest `window` drops when set. Fails when there are
    none, with each held-back drop's status (`statuses`: drop -> its `drop_status`) as the cause."""
    drops = [(drop, records) for drop, records in sorted(per_drop.items()) if records is not None]
    if window:
        drops = drops[-window:]
    if not drops:
        held = "".join(f" Drop {drop}: {status}." for drop, status in sorted((statuses or {}).items()))
        advice = (
            " Land data and let the landing sensor (or make run) ingest and validate it; a drop's failed "
            "checks say why it was held back."
        )
        raise ValueError(f"No drop has passed validation yet, so there is nothing to train on.{held or advice}")
    return drops


def mark_cross_drop_duplicates(pairs: list[dict], seen: FirstSeen) -> None:
    """Rows repeating (up to case and whitespace) a row of an earlier drop get split 'excluded' and
    an `excluded_reason`; each drop's own duplicates were already rejected by its validation."""
    texts = [normalize(conversation_text(p["messages"], p["chosen"], p["rejected"])) for p in pairs]
    for p, first in zip(pairs, seen.check(texts, [row_location(p) for p in pairs])):
        if first is not None:
            p["split"], p["excluded_reason"] = "excluded", f"duplicate of {first} from an earlier drop"


class SetHash:
    """Order-independent hash of a set of examples, to name exactly what a model learned from:
    the sum of each example's digest, so it can be computed batch by batch in any order."""

    def __init__(self):
        self.total = 0

    def add(self, example_id: str, messages: list[dict]) -> None:
        digest = hashlib.sha256(f"{example_id}\x1f{messages!r}".encode()).digest()
        self.total = (self.total + int.from_bytes(digest[:SET_DIGEST_BYTES])) % (1 << 128)

    def hexdigest(self) -> str:
        return f"{self.total:032x}"[:SET_HASH_CHARS]


@dataclass
class PairTally:
    """What instruction_pairs reports, gathered batch by batch."""

    train: int = 0
    eval: int = 0
    preference: int = 0
    preference_train: int = 0
    preference_eval: int = 0
    excluded: int = 0
    excluded_examples: list[str] = field(default_factory=list)
    drops: dict[str, set] = field(default_factory=dict)
    """drop -> the Great Expectations results its rows passed"""
    train_hash: SetHash = field(default_factory=SetHash)
    eval_hash: SetHash = field(default_factory=SetHash)
    example: list[dict] | None = None
    smallest_ids: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "eval": []})
    """Per side, its two smallest distinct example ids (prompt hashes): whether it holds more than
    one prompt, and which prompt moves when the hash left the other side empty (`prompt_to_move`)."""

    def add(self, pairs: list[dict]) -> None:
        for p in pairs:
            self.drops.setdefault(p["drop"], set()).update([p["gx_result"]] if p["gx_result"] else [])
            if self.example is None:
                self.example = p["messages"]
            if p["split"] in self.smallest_ids and p["example_id"] not in (ids := self.smallest_ids[p["split"]]):
                ids.append(p["example_id"])
                ids.sort()
                del ids[2:]
            if p["kind"] == "preference":
                self.preference += 1
                # Both sets name what they hold: the pairs DPO (or SFT on their chosen replies) trains
                # on, and the held-out pairs evaluation scores.
                if p["split"] == "train":
                    self.preference_train += 1
                    self.train_hash.add(p["example_id"], [p["messages"], p["chosen"], p["rejected"]])
                elif p["split"] == "eval":
                    self.preference_eval += 1
                    self.eval_hash.add(p["example_id"], [p["messages"], p["chosen"], p["rejected"]])
            elif p["split"] == "train":
                self.train += 1
                self.train_hash.add(p["example_id"], p["messages"])
            elif p["split"] == "eval":
                self.eval += 1
                self.eval_hash.add(p["example_id"], p["messages"])
            if p["split"] == "excluded":
                self.excluded += 1
                if len(self.excluded_examples) < EXAMPLE_ROWS:
                    self.excluded_examples.append(f"{row_location(p)}: {p['excluded_reason']}")

    def examples(self, side: str) -> int:
        """Examples of both kinds on one side of the split ('train' or 'eval')."""
        return self.train + self.preference_train if side == "train" else self.eval + self.preference_eval

    def prompt_to_move(self) -> tuple[str, str] | None:
        """When the hash left one side without examples (a landing of a few rows): the prompt (its
        example id, the smallest of the other side) whose rows move there, and that side; None when
        both sides hold examples or the other side holds a single prompt (nothing to spare)."""
        for empty, full in (("eval", "train"), ("train", "eval")):
            if not self.examples(empty) and len(self.smallest_ids[full]) > 1:
                return self.smallest_ids[full][0], empty
        return None

    def summary(self) -> PairsSummary:
        return PairsSummary(
            train_rows=self.train,
            eval_rows=self.eval,
            preference_pairs=self.preference,
            excluded_duplicates=self.excluded,
            drops=tuple(sorted(self.drops)),
            validations={d: sorted(results) for d, results in sorted(self.drops.items())},
            train_set_hash=self.train_hash.hexdigest(),
            eval_set_hash=self.eval_hash.hexdigest(),
        )


PAIRS_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("kind", pa.string()),
        ("messages", MESSAGES),
        ("tools", pa.string()),  # JSON: the functions the conversation may call
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("split", pa.string()),
        ("n_tokens", pa.int64()),
        ("drop", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("gx_result", pa.string()),
        ("excluded_reason", pa.string()),
        ("category", pa.string()),  # the record's category field (ingest.category_field), or null
        ("format", pa.string()),  # the record format of the row's file (openai_chat, sharegpt, ...)
    ]
)


def quality_row(drop: str, value: dict | None) -> str:
    if value is None:
        return f"| {drop} | not validated: its ingestion failed (see its raw_records run) | | | | | | | |"
    reasons = "; ".join(f"{rule} ({n})" for rule, n in table_counts(value.get("top_reasons")).items())
    pii = ", ".join(f"{kind} {n}" for kind, n in table_counts(value.get("pii_counts")).items())
    share = value.get("rejected_share")
    cuts = "; ".join(f"{cut} ({n})" for cut, n in (value.get("truncations") or {}).items())
    left_out = value.get("rows_left_out") or 0
    why = value.get("left_out_reason") if left_out else ""
    return (
        f"| {drop} | {value.get('drop_status', '')} | {value.get('rows_raw', '')} | {value.get('rows_rejected', '')} "
        f"| {'' if share is None else f'{share:.1%}'} | {reasons or '-'} | {pii or '-'} "
        f"| {value.get('rows_truncated', '')}{f' ({cuts})' if cuts else ''} | {left_out}{f' ({why})' if why else ''} |"
    )


def quality_table(metadata: dict[str, dict | None]) -> str:
    """Each drop's data quality in one table (`drop_metadata`)."""
    lines = [
        "| drop | status | rows | rejected as bad data | rejected share | top reasons | possible personal data "
        "| cut to fit max_tokens | left out for length |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [quality_row(drop, value) for drop, value in metadata.items()]
    return "\n".join(lines)


def show_example(messages: list[dict]) -> str:
    return "\n\n".join(f"**{m['role']}**: {reply_text(m)}" for m in messages)  # tool calls as blocks


def unusable_split(tally: PairTally, rows: int) -> str | None:
    """Why the split gives nothing to train and evaluate on, or None when it does (after
    `prompt_to_move`): no example at all, or a single prompt, which cannot be on both sides."""
    if not tally.examples("train") and not tally.examples("eval"):
        if rows:
            return f"Nothing to train on: all {rows} validated rows repeat rows of earlier drops."
        return "Nothing to train on: the drops that passed validation hold no rows."
    if tally.prompt_to_move() is None and not (tally.examples("train") and tally.examples("eval")):
        n = tally.examples("train") + tally.examples("eval")
        return (
            f"Only one prompt to learn from ({n} example{'s' if n > 1 else ''}): nothing can be held out for "
            "evaluation, which needs a prompt of its own. Add data: at least two examples with different prompts."
        )
    return None


def moved(pairs: RecordSet, example_id: str, side: str) -> tuple[RecordWriter, PairTally]:
    """`pairs` rewritten in place with every row of prompt `example_id` on `side`, and their tally."""
    tally = PairTally()
    with RecordWriter(Path(pairs.path), PAIRS_SCHEMA, ("tools",)) as out:
        for batch in pairs.batches():
            for p in batch:
                if p["example_id"] == example_id and p["split"] != "excluded":
                    p["split"] = side
            out.write(batch)
            tally.add(batch)
    return out, tally


def write_pairs(
    drops: list[tuple[str, RecordSet]], config: SplitConfig, path: Path, scratch: Path, cause: str = ""
) -> tuple[RecordWriter, PairTally, str]:
    """Write the pairs of `drops` to `path`, drop by drop and batch by batch, repeats of an
    earlier drop's row excluded; returns them, their tally and a note when the split was evened.
    Preference pairs are split like every row, by their prompt's hash.

    A landing of a few rows may hash every prompt to one side: then the prompt with the smallest
    hash of that side moves to the other, so there is an example to train on and one to evaluate on
    (until the data grows, the split then depends on the whole set, not each prompt alone). Fails,
    naming the cause (`unusable_split`, then `cause`: what the drops' validation left out), when there
    is nothing to train on or a single prompt."""
    tally = PairTally()
    with tempfile.TemporaryDirectory(dir=scratch) as tmp, RecordWriter(path, PAIRS_SCHEMA, ("tools",)) as out:
        seen = FirstSeen(Path(tmp) / "seen.sqlite")
        for _, records in drops:
            stored = records.column_names()  # a drop validated before a column existed lacks it
            for batch in records.batches(columns=[c for c in PAIR_SOURCE_COLUMNS if c in stored]):
                pairs = build_pairs(batch, config.eval_fraction, config.split_salt)
                mark_cross_drop_duplicates(pairs, seen)
                out.write(pairs)
                tally.add(pairs)
        seen.close()
        if problem := unusable_split(tally, out.rows):
            raise ValueError(f"{problem} {cause}".strip())
    if (move := tally.prompt_to_move()) is None:
        return out, tally, ""
    example_id, side = move
    other = "eval" if side == "train" else "train"
    out, tally = moved(out.record_set(), example_id, side)
    note = f"the prompt hash put every example in {other}; the prompt with the smallest hash moved to {side}"
    return out, tally, note


@dataclass(frozen=True)
class LengthTally:
    """What the length budget did to the rows of the drops a run used: rows cut to fit and rows
    left out, each by its reason (from each drop's validation)."""

    truncated: int
    left_out: int
    reasons: dict[str, int]

    @classmethod
    def of(cls, metadata: dict[str, dict | None], drops: list[str]) -> "LengthTally":
        reasons: Counter = Counter()
        truncated = left_out = 0
        for value in (metadata.get(d) or {} for d in drops):
            truncated += value.get("rows_truncated") or 0
            left_out += value.get("rows_left_out") or 0
            reasons.update({f"cut to fit: {cut}": n for cut, n in (value.get("truncations") or {}).items()})
            if value.get("rows_left_out"):
                reasons[f"left out: {value.get('left_out_reason')}"] += value["rows_left_out"]
        return cls(truncated, left_out, dict(reasons.most_common()))


def cause_of(metadata: dict[str, dict | None]) -> str:
    """Why drops give no rows to train on (each drop's status, unless it is in training), for an
    error that finds nothing to train on."""
    statuses = {d: (value or {}).get("drop_status") for d, value in metadata.items()}
    return " ".join(f"Drop {d}: {s}." for d, s in statuses.items() if s and s != IN_TRAINING)


def mixing_fields(pairs: RecordSet, rules: list[MixingRule]) -> dict:
    """The summary's mixing fields (none without rules): the rules as given, their counts over the
    train split (`mixture_table`) and their hash, which the training stages sample by."""
    if not rules:
        return {}
    train = pairs.frame(columns=list(SELECTORS), where=[("split", "=", "train")])
    table = tuple(mixture_table(train, rules))
    return {"mixing": given(rules), "mixing_table": table, "mixing_hash": mixing_hash(rules)}


def pairs_metadata(
    summary: PairsSummary,
    tally: PairTally,
    lengths: LengthTally,
    split_note: str | None,
    held_back: list[str],
    quality: dict,
    path: Path,
) -> dict:
    """instruction_pairs' metadata: the split's counts, what the length budget cut or left out, the
    drops used and held back with each drop's quality, the set hashes, the mixing weights' table, an
    example, the dataset."""
    return {
        "train_rows": summary.train_rows,
        "eval_rows": summary.eval_rows,
        "preference_pairs": summary.preference_pairs,
        "preference_pairs_train": tally.preference_train,
        "preference_pairs_eval": tally.preference_eval,
        "excluded_duplicates": summary.excluded_duplicates,
        "rows_truncated": lengths.truncated,
        "rows_left_out": lengths.left_out,
        "length_reasons": dg.MetadataValue.json(lengths.reasons),
        "split_note": split_note or "-",
        "drops": dg.MetadataValue.json(list(summary.drops)),
        "drops_held_back": dg.MetadataValue.json(held_back),
        "drop_quality": dg.MetadataValue.md(quality_table(quality)),
        "excluded_examples": dg.MetadataValue.json(tally.excluded_examples),
        "train_set_hash": summary.train_set_hash,
        "eval_set_hash": summary.eval_set_hash,
        "mixing": dg.MetadataValue.md(mixture_markdown(summary.mixing_table) if summary.mixing else "none"),
        "mixing_hash": summary.mixing_hash or "-",
        "example": dg.MetadataValue.md(show_example(tally.example or [])),
        "dataset": dg.MetadataValue.path(str(path)),
    }


@dg.asset(
    group_name="data",
    kinds={"parquet"},
    ins={"validated_records": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    automation_condition=RETRAIN_ON_NEW_DATA,
)
def instruction_pairs(
    context: dg.AssetExecutionContext, split: SplitConfig, validated_records: Any, state: StateStore
) -> RecordSet:
    """Chat examples from every drop that passed validation (or the latest `drops_window`), one per
    validated row: `kind` ('sft', or 'preference' for prompt/chosen/rejected pairs kept for
    preference training; SFT uses only 'sft'), `messages` (system, then alternating user/assistant
    turns, with tool calls and tool replies where the data has them), `tools`, `chosen`/`rejected`,
    `split` ('train' or 'eval' by a hash of the normalized prompt, so the split is deterministic and
    an example never changes side as drops arrive; 'excluded' with an `excluded_reason` for repeats
    of an earlier drop's row), `example_id` (that hash), `n_tokens`, the row's source (`drop`,
    `source_file`, `source_line`, `format`, `gx_result`) and `category` (the record's category field,
    null when it has none), which evaluation results are also broken down by. The train rows' mixing
    weights (`split.mixing`) are counted here and applied by the training stages.

    Streamed drop by drop and batch by batch into a Parquet file under FT_HOME/datasets; repeats
    across drops are found through an on-disk table, so memory does not grow with the data. The
    value's `summary` (a `PairsSummary`) carries the counts, drops and set hashes that registration records.
    """
    per_drop = by_drop(validated_records)
    passed = {d for d, records in per_drop.items() if records is not None}
    drops = sorted(context.instance.get_dynamic_partitions(DROPS.name))
    held_back = sorted(set(drops) - passed)
    quality = drop_metadata(context.instance, drops)
    statuses = {d: quality[d]["drop_status"] for d in held_back if quality.get(d) and "drop_status" in quality[d]}
    used = drops_to_use(per_drop, split.drops_window, statuses)
    used_drops = [drop for drop, _ in used]
    path = state.dataset_path("instruction_pairs", None, context.run.run_id)
    out, tally, split_note = write_pairs(used, split, path, state.scratch_dir(), cause_of(quality))
    if split_note:
        context.log.warning(f"Split evened: {split_note}")
    lengths = LengthTally.of(quality, used_drops)
    mixing = mixing_fields(out.record_set(), split.mixing)
    summary = replace(tally.summary(), rows_truncated=lengths.truncated, rows_left_out=lengths.left_out, **mixing)
    context.add_output_metadata(pairs_metadata(summary, tally, lengths, split_note, held_back, quality, path))
    return out.record_set(summary=summary)
