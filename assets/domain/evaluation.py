"""The `evaluation` settings: how the base, the candidate and the champion are scored.

Shared, not an asset: `model_evaluation` scores with them, and the GRPO recipe rewards what they check
(the answer pattern), so they live where both can read them.
"""

import hashlib
import json
import math
from pathlib import Path

import dagster as dg
from pydantic import Field

GENERAL_PROBE = Path(__file__).resolve().parent / "general_probe.txt"
# Hex characters of a sha256 that name an evaluation's settings.
HASH_CHARS = 16


# Where a registered version's run keeps its per-item scores (`Evaluation.items["tuned"]`), so that a
# later candidate is compared with it item by item without scoring it again.
ITEMS_ARTIFACT = "eval/items.json"


class EvaluationConfig(dg.ConfigurableResource):
    """How the base, the candidate and the champion are scored on the eval split: the primary metric,
    how many examples and tokens, batched greedy decoding. The `evaluation` section of the preset."""

    primary_metric: str = Field(
        default="auto",
        description="Metric the promotion gate compares; 'auto' picks exact_match when every expected "
        "answer is JSON, else rougeL.",
    )
    max_new_tokens: int = Field(
        default=0,
        description="Generation budget per answer (greedy decoding). 0 (auto): from the eval answers' own "
        "token lengths (their 95th percentile plus a quarter, plus the end-of-turn token), at most "
        "max_new_tokens_cap, so long references are not scored on cut-off generations.",
    )
    max_new_tokens_cap: int = Field(default=256, description="Largest budget the auto max_new_tokens may pick.")
    answer_pattern: str = Field(
        default="",
        description="Optional regex marking the final answer (e.g. '#### (.+)'); when set, exact_match compares "
        "what it extracts (its first group, or the whole match; the last match in the text) from the "
        "generation and the reference.",
    )
    batch_size: int = Field(
        default=16, description="Examples scored together (eval loss, preference pairs), at most (max_batch_tokens)."
    )
    max_batch_tokens: int = Field(
        default=4096,
        ge=0,
        description="Padded tokens scored together (eval loss, preference pairs), at most: the rows times the "
        "longest row. Examples are scored shortest first, each batch holding as many as fit this and batch_size; "
        "one longer than this is scored alone. Scoring holds the full-vocabulary logits of every token of a batch "
        "(SmolLM2: 0.8 GB per 4,096 tokens), so a few long examples would otherwise decide the memory a batch "
        "takes. 0: batch_size alone.",
    )
    generation_batch_size: int = Field(
        default=32,
        description="Prompts answered together, batched by length. Decoding a step reads every weight once for "
        "the whole batch, so larger batches pay up to where memory runs short (BENCHMARKS.md, Evaluation).",
    )
    max_eval_examples: int = Field(
        default=0, description="Score at most this many eval examples (0: all), the same ones every time."
    )
    sample_rows: int = Field(default=12, description="Generations shown in the samples table.")
    probe_path: str = Field(
        default=str(GENERAL_PROBE),
        description="General text whose perplexity before and after fine-tuning measures forgetting.",
    )

    def settings_hash(self, max_new_tokens: int) -> str:
        """Identifies everything that makes two evaluations comparable, apart from the eval set:
        the generation budget in force (`max_new_tokens`, resolved when auto), the example count,
        the answer pattern and the probe."""
        probe = Path(self.probe_path).read_bytes()
        fields = {"max_new_tokens": max_new_tokens, "max_eval_examples": self.max_eval_examples}
        if self.answer_pattern:
            fields["answer_pattern"] = self.answer_pattern
        payload = json.dumps(fields, sort_keys=True).encode() + hashlib.sha256(probe).digest()
        return hashlib.sha256(payload).hexdigest()[:HASH_CHARS]


def generation_budget(tokenizer, references: list[str], cap: int) -> int:
    """Enough new tokens for nearly every reference answer: the 95th percentile of their token
    lengths plus a quarter of it as headroom, plus the end-of-turn token, at most `cap`."""
    lengths = sorted(len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"])
    p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    return min(cap, p95 + math.ceil(p95 / 4) + 1)
