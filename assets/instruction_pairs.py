"""instruction_pairs: validated rows as chat examples, split into train and eval."""

import hashlib
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import conversation_text, normalize, prompt_hash
from assets._drops import DROPS, by_drop

SPLIT_BUCKETS = 10_000

# Retrain when any validated drop (or the base model) changed since this asset last ran, once
# nothing upstream is still running. Held-back drops are missing partitions and must not block it,
# which is why this is not AutomationCondition.eager().
RETRAIN_ON_NEW_DATA = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


class SplitConfig(dg.ConfigurableResource):
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


def split_of(prompt_digest: str, eval_fraction: float, salt: str = "") -> str:
    """'eval' or 'train', a pure function of the normalized prompt's hash (never of row order)."""
    digest = hashlib.sha256((salt + prompt_digest).encode()).hexdigest()
    return "eval" if int(digest[:12], 16) % SPLIT_BUCKETS < eval_fraction * SPLIT_BUCKETS else "train"


def build_pairs(validated: pd.DataFrame, eval_fraction: float, salt: str = "") -> pd.DataFrame:
    hashes = [prompt_hash(m) for m in validated["messages"]]
    return pd.DataFrame(
        {
            "example_id": hashes,
            "kind": validated["kind"].tolist(),
            "messages": validated["messages"].tolist(),
            "chosen": validated["chosen"].tolist(),
            "rejected": validated["rejected"].tolist(),
            "split": [split_of(h, eval_fraction, salt) for h in hashes],
            "n_tokens": validated["n_tokens"].tolist(),
            "drop": validated["drop"].tolist(),
            "source_file": validated["source_file"].tolist(),
            "source_line": validated["source_line"].tolist(),
            "gx_result": validated["gx_result"].tolist() if "gx_result" in validated else None,
        }
    )


def combine_drops(per_drop: dict, window: int = 0) -> pd.DataFrame:
    """The validated rows of the drops that passed their gate (missing partitions are held-back
    drops), oldest drop first, limited to the latest `window` drops when set."""
    frames = {drop: frame for drop, frame in sorted(per_drop.items()) if frame is not None}
    if window:
        frames = dict(list(frames.items())[-window:])
    if not frames:
        raise ValueError(
            "No drop has passed validation yet, so there is nothing to train on. Land data and let the "
            "landing sensor (or make run) ingest and validate it; a drop's failed checks say why it was held back."
        )
    return pd.concat(frames.values(), ignore_index=True)


def mark_cross_drop_duplicates(pairs: pd.DataFrame) -> pd.DataFrame:
    """Rows repeating (up to case and whitespace) a row of an earlier drop get split 'excluded' and
    an `excluded_reason`; each drop's own duplicates were already rejected by its validation."""
    seen: dict[str, str] = {}
    reasons = []
    for r in pairs.to_dict("records"):
        key = normalize(conversation_text(r["messages"], r["chosen"], r["rejected"]))
        here = f"{r['source_file']}:{r['source_line']}"
        reasons.append(f"duplicate of {seen[key]} from an earlier drop" if key in seen else None)
        seen.setdefault(key, here)
    pairs = pairs.copy()
    pairs["excluded_reason"] = reasons
    pairs.loc[pairs["excluded_reason"].notna(), "split"] = "excluded"
    return pairs


def content_hash(pairs: pd.DataFrame) -> str:
    """Order-independent hash of a set of examples, to name exactly what a model learned from."""
    digest = hashlib.sha256()
    for example_id, messages in sorted(zip(pairs["example_id"], pairs["messages"].map(repr))):
        digest.update(f"{example_id}\x1f{messages}\n".encode())
    return digest.hexdigest()[:16]


def show_example(messages: list[dict]) -> str:
    return "\n\n".join(f"**{m['role']}**: {m['content']}" for m in messages)


@dg.asset(
    group_name="data",
    kinds={"pandas"},
    ins={"validated_records": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    automation_condition=RETRAIN_ON_NEW_DATA,
)
def instruction_pairs(context: dg.AssetExecutionContext, split: SplitConfig, validated_records: Any) -> pd.DataFrame:
    """Chat examples from every drop that passed validation (or the latest `drops_window`), one per
    validated row: `kind` ('sft', or 'preference' for prompt/chosen/rejected pairs kept for
    preference training; SFT uses only 'sft'), `messages` (system, then alternating user/assistant
    turns), `chosen`/`rejected`, `split` ('train' or 'eval' by a hash of the normalized prompt, so
    the split is deterministic and an example never changes side as drops arrive; 'excluded' with
    an `excluded_reason` for repeats of an earlier drop's row), `example_id` (that hash), `n_tokens`,
    and the row's source (`drop`, `source_file`, `source_line`, `gx_result`).
    """
    per_drop = by_drop(validated_records)
    passed = {d for d, frame in per_drop.items() if frame is not None}
    held_back = sorted(set(context.instance.get_dynamic_partitions(DROPS.name)) - passed)
    combined = combine_drops(per_drop, split.drops_window)
    pairs = mark_cross_drop_duplicates(build_pairs(combined, split.eval_fraction, split.split_salt))
    sft = pairs[pairs["kind"] == "sft"]
    train, evals = sft[sft["split"] == "train"], sft[sft["split"] == "eval"]
    if len(train) == 0 or len(evals) == 0:
        raise ValueError(
            f"The split left {len(train)} train and {len(evals)} eval SFT examples from {len(pairs)} rows; "
            "both need at least one. Add data or change eval_fraction."
        )
    excluded = pairs[pairs["split"] == "excluded"]
    context.add_output_metadata(
        {
            "train_rows": len(train),
            "eval_rows": len(evals),
            "preference_pairs": int((pairs["kind"] == "preference").sum()),
            "drops": dg.MetadataValue.json(sorted(pairs["drop"].unique().tolist())),
            "drops_held_back": dg.MetadataValue.json(held_back),
            "excluded_duplicates": len(excluded),
            "excluded_examples": dg.MetadataValue.json(
                [
                    f"{r['source_file']}:{r['source_line']}: {r['excluded_reason']}"
                    for r in excluded.head(10).to_dict("records")
                ]
            ),
            "train_set_hash": content_hash(train),
            "eval_set_hash": content_hash(evals),
            "example": dg.MetadataValue.md(show_example(pairs["messages"].iloc[0])),
        }
    )
    return pairs
