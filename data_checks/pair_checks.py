"""Asset checks on instruction_pairs."""

import dagster as dg
import pandas as pd

from assets._chat_format import conversation_text, normalize, prompt_turns


@dg.asset_check(asset="instruction_pairs", blocking=True)
def train_eval_disjoint(instruction_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    """No prompt is on both sides of the split, compared exactly and case/whitespace-normalized.
    Rows excluded as repeats of an earlier drop are on neither side."""
    prompts = instruction_pairs["messages"].map(lambda m: conversation_text(prompt_turns(m)))
    is_eval, is_train = instruction_pairs["split"] == "eval", instruction_pairs["split"] == "train"
    exact = set(prompts[is_eval]) & set(prompts[is_train])
    normalized = set(prompts[is_eval].map(normalize)) & set(prompts[is_train].map(normalize))
    return dg.AssetCheckResult(
        passed=not exact and not normalized,
        metadata={
            "shared_exact": len(exact),
            "shared_normalized": len(normalized),
            "examples": dg.MetadataValue.json(sorted(normalized)[:5]),
        },
    )
