"""The `evaluation` settings: how the base, the candidate and the champion are scored.

Shared, not an asset: `model_evaluation` scores with them, and the GRPO recipe rewards what they check
(the answer pattern), so they live where both can read them.
"""

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

GENERAL_PROBE = Path(__file__).resolve().parent / "general_probe.txt"
# The regression suite shipped with the sample: general-knowledge questions a model must not forget.
SAMPLE_SUITES = Path(__file__).resolve().parents[2] / "pipelines" / "sample_data" / "suites"
GENERAL_KNOWLEDGE = SAMPLE_SUITES / "general_knowledge.jsonl"
# Hex characters of a sha256 that name an evaluation's settings.
HASH_CHARS = 16


# Where a registered version's run keeps its per-item scores (`Evaluation.items["tuned"]`), so that a
# later candidate is compared with it item by item without scoring it again.
ITEMS_ARTIFACT = "eval/items.json"
# Where it keeps its answers to the eval prompts (the samples table, personal data masked): the judge
# compares a later candidate's answers with them.
SAMPLES_ARTIFACT = "eval/samples.json"
# The judge's win rate of the candidate over another model (`<JUDGE_METRIC>_vs_base`, `..._vs_champion`).
JUDGE_METRIC = "judge_win_rate"


class SuiteConfig(dg.Config):
    """A benchmark set every model is also scored on (base, candidate, champion), through
    lm-evaluation-harness (`resources/benchmark_suites.py`): a local JSONL or Parquet file, multiple
    choice (`question`, `choices`, `answer`) or prompt and reference (`prompt`, `reference`)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The suite's name (letters, digits, _ and -), in metrics (`suite.<name>.<metric>`) and gate "
        "criteria.",
    )
    path: str = Field(description="The JSONL or Parquet file; a relative path is taken from the preset file's folder.")
    metric: str = Field(
        default="auto",
        description="acc or acc_norm for multiple choice; exact_match or rougeL for prompt and reference; "
        "auto: acc, or exact_match.",
    )
    max_regression: float | None = Field(
        default=None,
        description="Gate: how far the candidate's score may fall below the base's and the champion's, shown "
        "by the lower bound of the paired difference's interval (0: no loss at all). None: scored and shown, "
        "not gated.",
    )
    max_new_tokens: int = Field(default=64, description="Generation budget per answer (prompt and reference).")


class JudgeConfig(dg.Config):
    """A judge model comparing the candidate's answers with the base's and the champion's, prompt by
    prompt, in both orders (`resources/judge.py`)."""

    kind: Literal["off", "endpoint", "local"] = Field(
        default="off",
        description="off; endpoint: any OpenAI-compatible chat completions endpoint (base_url, model, the key "
        "from the environment variable api_key_env); local: a Hugging Face model folder (model; empty: the "
        "base model).",
    )
    model: str = Field(default="", description="The endpoint's model name, or the local model's folder.")
    base_url: str = Field(default="", description="The endpoint, e.g. http://127.0.0.1:8000/v1 (empty: OpenAI's).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="The environment variable holding the key.")
    max_prompts: int = Field(default=0, ge=0, description="Judge at most this many eval prompts (0: all).")


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
    suites: list[SuiteConfig] = Field(
        default=[{"name": "general_knowledge", "path": str(GENERAL_KNOWLEDGE), "max_regression": 0.15}],
        validate_default=True,
        description="Benchmark sets scored for base, candidate and champion beside the eval split (regression "
        "suites); each may hold the gate to a largest regression.",
    )
    judge: JudgeConfig = Field(
        default=JudgeConfig(),
        description="A judge model's pairwise verdicts on the answers (win rate over base and champion); off "
        "by default.",
    )
    probe_path: str = Field(
        default=str(GENERAL_PROBE),
        description="General text whose perplexity before and after fine-tuning measures forgetting.",
    )

    def settings_hash(self, max_new_tokens: int) -> str:
        """Identifies everything that makes two evaluations comparable, apart from the eval set:
        the generation budget in force (`max_new_tokens`, resolved when auto), the example count,
        the answer pattern, the probe and the suites (their names, metrics and files' contents)."""
        probe = Path(self.probe_path).read_bytes()
        fields = {"max_new_tokens": max_new_tokens, "max_eval_examples": self.max_eval_examples}
        if self.answer_pattern:
            fields["answer_pattern"] = self.answer_pattern
        if self.suites:
            fields["suites"] = [
                [s.name, s.metric, s.max_new_tokens, hashlib.sha256(Path(s.path).read_bytes()).hexdigest()]
                for s in self.suites
            ]
        payload = json.dumps(fields, sort_keys=True).encode() + hashlib.sha256(probe).digest()
        return hashlib.sha256(payload).hexdigest()[:HASH_CHARS]


def generation_budget(tokenizer, references: list[str], cap: int) -> int:
    """Enough new tokens for nearly every reference answer: the 95th percentile of their token
    lengths plus a quarter of it as headroom, plus the end-of-turn token, at most `cap`."""
    lengths = sorted(len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"])
    p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    return min(cap, p95 + math.ceil(p95 / 4) + 1)
