"""The promotion gate: whether a newly registered version may become champion.

A blocking asset check on `registered_model`: when it fails, `champion_model` does not run and the
version stays `challenger`. The verdict is a pure function of the evaluation and the gate settings.
"""

import dagster as dg
from pydantic import Field

from assets.domain.values import Criterion, Evaluation, GateVerdict

GATE_CHECK = "promotion_gate"
# The metric the gate holds a preference-trained version to (see model_evaluation `preference_metrics`).
PREFERENCE_METRIC = "preference_accuracy"
# How much the tuned primary metric must beat the base by default, by task type.
DEFAULT_MIN_IMPROVEMENT = {"json": 0.05, "open_ended": 0.01, "tool_call": 0.05}

GATE_CHECK_SPEC = dg.AssetCheckSpec(
    GATE_CHECK,
    asset="registered_model",
    blocking=True,
    description="The promotion gate: the new version beats the base and the champion on the primary "
    "metric, within the forgetting budget, and (when it trained on preference pairs) keeps its preference "
    "accuracy at or above the base's. Blocks champion_model; the version stays challenger.",
)


class GateConfig(dg.ConfigurableResource):
    """When a new version may become champion: its margin over the base and the champion on the
    primary metric, the forgetting budget and the preference accuracy. The `gate` section of the preset."""

    min_improvement: float | None = Field(
        default=None,
        description="How much the tuned primary metric must exceed the base model's. Default by task "
        "type: 0.05 for JSON answers (exact match), 0.01 for open-ended text (ROUGE-L).",
    )
    min_gain_over_champion: float = Field(
        default=0.0,
        description="How much it must exceed the current champion's, on the same eval set (0: any gain).",
    )
    max_forgetting_pct: float = Field(
        default=10.0,
        description="Largest rise, in percent, of perplexity on the general-text probe (forgetting budget).",
    )
    min_preference_gain: float = Field(
        default=0.0,
        description="When the version trained on preference pairs (method dpo or sft+dpo) and the eval split "
        "holds some: how much its preference_accuracy (share of held-out pairs whose chosen reply it finds "
        "likelier than the rejected one) must gain over the base model's; 0: it must not fall below it.",
    )


def gate_verdict(evaluation: Evaluation, gate: GateConfig) -> GateVerdict:
    """Whether the challenger may become champion, why (in words, for a tag), and each criterion
    with its value beside its threshold. It must beat the base by more than `min_improvement` on
    the primary metric, the current champion (scored on the same eval set) by more than
    `min_gain_over_champion`, and keep forgetting within `max_forgetting_pct`. When it trained on
    preference pairs, its preference accuracy on the held-out pairs must also reach the base's plus
    `min_preference_gain`."""
    primary, tuned = evaluation.primary_metric, evaluation.tuned_primary
    margin = gate.min_improvement
    if margin is None:
        margin = DEFAULT_MIN_IMPROVEMENT[evaluation.task_type]
    base = evaluation.base_primary
    criteria = [Criterion(f"{primary} vs base", tuned, f"> {base:.4f} + {margin}", tuned > base + margin)]
    champion = evaluation.champion
    if champion is not None and primary in champion.metrics:
        best, gain = champion.metrics[primary], gate.min_gain_over_champion
        name = f"{primary} vs champion v{champion.version}"
        criteria.append(Criterion(name, tuned, f"> {best:.4f} + {gain}", tuned > best + gain))
    forgetting, budget = evaluation.forgetting_pct, gate.max_forgetting_pct
    criteria.append(Criterion("probe perplexity change %", forgetting, f"<= {budget}", forgetting <= budget))
    if evaluation.trained_on_preferences and PREFERENCE_METRIC in evaluation.tuned:
        ours, theirs, gain = (
            evaluation.tuned[PREFERENCE_METRIC],
            evaluation.base[PREFERENCE_METRIC],
            gate.min_preference_gain,
        )
        threshold = f">= {theirs:.4f} + {gain}"
        criteria.append(Criterion(f"{PREFERENCE_METRIC} vs base", ours, threshold, ours >= theirs + gain))
    failed = [c for c in criteria if not c.passed]
    if failed:
        reason = "; ".join(f"{c.criterion}: {c.value:.4f}, needs {c.threshold}" for c in failed)
    else:
        reason = "; ".join(f"{c.criterion}: {c.value:.4f} ({c.threshold})" for c in criteria)
    return GateVerdict(passed=not failed, reason=reason, criteria=tuple(criteria))


def gate_table(verdict: GateVerdict) -> str:
    lines = ["| criterion | value | threshold | passed |", "|---|---|---|---|"]
    lines += [
        f"| {c.criterion} | {c.value:.4f} | {c.threshold} | {'yes' if c.passed else 'no'} |" for c in verdict.criteria
    ]
    return "\n".join(lines)


def gate_check_result(verdict: GateVerdict, version: str) -> dg.AssetCheckResult:
    """The blocking check's result: the verdict, each criterion beside its threshold, the version."""
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.reason,
        metadata={"criteria": dg.MetadataValue.md(gate_table(verdict)), "version": int(version)},
    )
