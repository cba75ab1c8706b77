"""instruction_pairs: validated rows as chat examples, split into train and eval."""

import hashlib

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._chat_format import prompt_hash

SPLIT_BUCKETS = 10_000


class SplitConfig(dg.Config):
    eval_fraction: float = Field(
        default=0.15, description="Share of examples held out for evaluation, chosen by content hash."
    )
    split_salt: str = Field(
        default="",
        description="Changes which examples land in eval. Leave empty so the split stays stable "
        "across runs and data drops: an eval example never moves into training.",
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
        }
    )


def content_hash(pairs: pd.DataFrame) -> str:
    """Order-independent hash of a set of examples, to name exactly what a model learned from."""
    digest = hashlib.sha256()
    for example_id, messages in sorted(zip(pairs["example_id"], pairs["messages"].map(repr))):
        digest.update(f"{example_id}\x1f{messages}\n".encode())
    return digest.hexdigest()[:16]


def show_example(messages: list[dict]) -> str:
    return "\n\n".join(f"**{m['role']}**: {m['content']}" for m in messages)


@dg.asset(group_name="data", kinds={"pandas"})
def instruction_pairs(
    context: dg.AssetExecutionContext, config: SplitConfig, validated_records: pd.DataFrame
) -> pd.DataFrame:
    """Chat examples, one per validated row: `kind` ('sft', or 'preference' for prompt/chosen/rejected
    pairs kept for preference training; SFT uses only 'sft'), `messages` (system, then alternating
    user/assistant turns), `chosen`/`rejected`, `split` ('train' or 'eval', decided by a hash of the
    normalized prompt, so the split is deterministic and an example never changes side),
    `example_id` (that hash), `n_tokens`, and the row's source.
    """
    pairs = build_pairs(validated_records, config.eval_fraction, config.split_salt)
    sft = pairs[pairs["kind"] == "sft"]
    train, evals = sft[sft["split"] == "train"], sft[sft["split"] == "eval"]
    if len(train) == 0 or len(evals) == 0:
        raise ValueError(
            f"The split left {len(train)} train and {len(evals)} eval SFT examples from {len(pairs)} rows; "
            "both need at least one. Add data or change eval_fraction."
        )
    context.add_output_metadata(
        {
            "train_rows": len(train),
            "eval_rows": len(evals),
            "train_set_hash": content_hash(train),
            "eval_set_hash": content_hash(evals),
            "preference_pairs": int((pairs["kind"] == "preference").sum()),
            "example": dg.MetadataValue.md(show_example(pairs["messages"].iloc[0])),
        }
    )
    return pairs
