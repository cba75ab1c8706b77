"""The promotion gate: whether a newly registered version may become champion.

A blocking asset check on `registered_model`: when it fails, `champion_model` does not run and the
version stays `challenger`. The verdict is a pure function of the evaluation and the gate settings.

Every criterion is decided on a paired comparison with its interval (`assets/domain/significance.py`:
the candidate and what it is compared with, scored on the same prompts, pairs or probe texts): a gain
(over the base, over the champion) counts only when the interval's lower bound clears the margin; a
loss that is allowed up to a tolerance (forgetting, preference accuracy) only when the interval's
bound on the loss side stays within it. A difference the eval set is too small to show does not
promote, and the verdict says how large a gain these items could show.
"""

import dagster as dg
from pydantic import Field

from assets.domain.lineage import gate_table
from assets.domain.significance import Interval, detectable_gain, paired_interval
from assets.domain.values import Criterion, Evaluation, GateVerdict

GATE_CHECK = "promotion_gate"
# The metric the gate holds a preference-trained version to (see model_evaluation `pair_logprobs`).
PREFERENCE_METRIC = "preference_accuracy"
# The per-text measure forgetting is taken on (`Evaluation.items`).
PROBE_METRIC = "probe_perplexity"
# How much the tuned primary metric must beat the base by default, by task type.
DEFAULT_MIN_IMPROVEMENT = {"json": 0.05, "open_ended": 0.01, "tool_call": 0.05}

GATE_CHECK_SPEC = dg.AssetCheckSpec(
    GATE_CHECK,
    asset="registered_model",
    blocking=True,
    description="The promotion gate, on paired intervals: the new version's gain on the primary metric over "
    "the base and the champion is shown (the interval's lower bound clears the margin), its forgetting is "
    "shown to stay within budget, (when it trained on preference pairs) its preference accuracy is shown "
    "not to fall below the base's, and on each regression suite with a tolerance it is shown not to fall "
    "further below the base and the champion. Blocks champion_model; the version stays challenger.",
)


class GateConfig(dg.ConfigurableResource):
    """When a new version may become champion: its margin over the base and the champion on the
    primary metric, the forgetting budget and the preference accuracy, each shown at `confidence`.
    The `gate` section of the preset."""

    confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="Confidence of every interval the gate decides on (paired bootstrap over the eval prompts, "
        "preference pairs and probe texts).",
    )
    seed: int = Field(default=0, description="Seed of the bootstrap: the same scores give the same intervals.")
    min_improvement: float | None = Field(
        default=None,
        description="How much the tuned primary metric must exceed the base model's, as the lower bound of "
        "the paired difference's interval. Default by task type: 0.05 for JSON answers (exact match), 0.01 "
        "for open-ended text (ROUGE-L).",
    )
    min_gain_over_champion: float = Field(
        default=0.0,
        description="How much it must exceed the current champion's on the same eval set, as the lower bound "
        "of the paired difference's interval (0: a gain the eval set shows, however small).",
    )
    max_forgetting_pct: float = Field(
        default=10.0,
        description="Largest rise, in percent, of perplexity on the general-text probe (forgetting budget), "
        "as the upper bound of the interval of the mean rise over the probe's texts.",
    )
    min_preference_gain: float = Field(
        default=0.0,
        description="When the version trained on preference pairs (method dpo or sft+dpo) and the eval split "
        "holds some: the lower bound the paired difference of its preference_accuracy (share of held-out "
        "pairs whose chosen reply it finds likelier than the rejected one) over the base model's must reach; "
        "0: it must be shown not to fall below it, -0.1: a loss of up to 0.1 is tolerated.",
    )
    min_judge_win_rate: float | None = Field(
        default=None,
        description="When the judge is on (evaluation.judge): the lower bound the candidate's win rate over the "
        "base and over the champion must clear (0.5: shown better than each). None: the win rates are shown, "
        "not gated.",
    )


def gain(name: str, key: str, interval: Interval, margin: float, unit: str) -> Criterion:
    """A criterion that asks for a gain over `margin`: passed when the interval's lower bound clears it."""
    passed = interval.low > margin
    note = ""
    if not passed and interval.estimate > margin:
        note = (
            f"{interval.n} {unit} can show a gain of {detectable_gain(interval, margin):.4f} or more "
            f"at {interval.confidence:.0%}"
        )
    return Criterion(name, interval.estimate, f"lower bound > {margin:+.4f}", passed, interval.low, interval.high,
                     interval.n, unit, note, key)  # fmt: skip


def within(name: str, key: str, interval: Interval, bound: float, unit: str, upper: bool) -> Criterion:
    """A criterion that tolerates a loss up to `bound`: passed when the interval's bound on the loss side
    (the upper one when a rise is the loss, as for forgetting) stays within it."""
    side = interval.high if upper else interval.low
    passed = side <= bound if upper else side >= bound
    threshold = f"upper bound <= {bound:+.4f}" if upper else f"lower bound >= {bound:+.4f}"
    note = "" if passed else f"the interval over {interval.n} {unit} reaches {side:+.4f}"
    return Criterion(name, interval.estimate, threshold, passed, interval.low, interval.high, interval.n, unit, note,
                     key)  # fmt: skip


def forgetting_interval(evaluation: Evaluation, gate: GateConfig) -> Interval:
    """The mean rise, in percent, of the probe perplexity over the probe's texts (`Evaluation.forgetting_pct`),
    and its interval."""
    base, tuned = evaluation.items["base"][PROBE_METRIC], evaluation.items["tuned"][PROBE_METRIC]
    rises = [100 * (t / b - 1) for t, b in zip(tuned, base)]
    return paired_interval(rises, [0.0] * len(rises), gate.confidence, gate.seed)


def gate_verdict(evaluation: Evaluation, gate: GateConfig) -> GateVerdict:
    """Whether the challenger may become champion, why (in words, for a tag), and each criterion with
    its paired difference and interval beside its threshold. Its gain on the primary metric over the
    base must be shown above `min_improvement`, over the current champion (scored on the same eval
    set) above `min_gain_over_champion`; its forgetting must be shown within `max_forgetting_pct`; when
    it trained on preference pairs, its preference accuracy must be shown at or above the base's plus
    `min_preference_gain`."""
    primary, items, confidence, seed = evaluation.primary_metric, evaluation.items, gate.confidence, gate.seed
    tuned = items["tuned"]
    margin = DEFAULT_MIN_IMPROVEMENT[evaluation.task_type] if gate.min_improvement is None else gate.min_improvement
    vs_base = paired_interval(tuned[primary], items["base"][primary], confidence, seed)
    criteria = [gain(f"{primary} vs base", "vs_base", vs_base, margin, "prompts")]
    champion = evaluation.champion
    if champion is not None:
        vs_champion = paired_interval(tuned[primary], champion.items[primary], confidence, seed)
        name = f"{primary} vs champion v{champion.version}"
        criteria.append(gain(name, "vs_champion", vs_champion, gate.min_gain_over_champion, "prompts"))
    forgetting = forgetting_interval(evaluation, gate)
    criteria.append(
        within("probe perplexity change %", "forgetting_pct", forgetting, gate.max_forgetting_pct, "probe texts", True)
    )
    if evaluation.trained_on_preferences and PREFERENCE_METRIC in tuned:
        ours, theirs = tuned[PREFERENCE_METRIC], items["base"][PREFERENCE_METRIC]
        interval = paired_interval(ours, theirs, confidence, seed)
        criteria.append(
            within(
                f"{PREFERENCE_METRIC} vs base", "preference_vs_base", interval, gate.min_preference_gain, "pairs", False
            )
        )
    criteria += suite_criteria(evaluation, gate) + judge_criteria(evaluation, gate)
    failed = [c for c in criteria if not c.passed]
    reason = verdict_reason(criteria, failed)
    return GateVerdict(passed=not failed, reason=reason, criteria=tuple(criteria), confidence=confidence)


def suite_criteria(evaluation: Evaluation, gate: GateConfig) -> list[Criterion]:
    """Per regression suite with a `max_regression`: the candidate must be shown not to fall further below
    the base, and below the champion when the champion was scored on the suite, than that tolerance."""
    criteria, champion = [], evaluation.champion
    others = {"base": evaluation.items["base"]}
    if champion is not None:
        others[f"champion v{champion.version}"] = champion.items
    for key, tolerance in evaluation.suites.items():
        if tolerance is None:
            continue
        suite = key.split(".")[1]
        for name, items in others.items():
            if key not in items:
                continue
            interval = paired_interval(evaluation.items["tuned"][key], items[key], gate.confidence, gate.seed)
            label = f"{key.removeprefix('suite.')} vs {name}"
            mlflow_key = f"suite_{suite}_vs_{name.split()[0]}"
            criteria.append(within(label, mlflow_key, interval, -tolerance, "suite items", False))
    return criteria


def judge_criteria(evaluation: Evaluation, gate: GateConfig) -> list[Criterion]:
    """With `min_judge_win_rate` set: the judge's win rate of the candidate over the base and over the
    champion (per prompt 1, 0.5 or 0), each shown above it."""
    if gate.min_judge_win_rate is None:
        return []
    criteria = []
    for other, scores in evaluation.judge.items():
        interval = paired_interval(list(scores), [0.0] * len(scores), gate.confidence, gate.seed)
        criteria.append(gain(f"judge win rate vs {other}", f"judge_vs_{other}", interval, gate.min_judge_win_rate,
                             "prompts"))  # fmt: skip
    return criteria


def criterion_text(c: Criterion) -> str:
    """'exact_match vs base: +0.6491 [+0.5263, +0.7719] on 57 prompts (lower bound > +0.0500)'."""
    shown = (
        f"{c.value:+.4f} [{c.low:+.4f}, {c.high:+.4f}] on {c.items} {c.unit}" if c.low is not None else f"{c.value:.4f}"
    )
    return f"{c.criterion}: {shown}"


def verdict_reason(criteria: list[Criterion], failed: list[Criterion]) -> str:
    """The verdict in words: the failed criteria with what they need and why not, else every criterion."""
    if failed:
        return "; ".join(
            f"{criterion_text(c)}, needs {c.threshold}" + (f" ({c.note})" if c.note else "") for c in failed
        )
    return "; ".join(f"{criterion_text(c)} ({c.threshold})" for c in criteria)


def gate_check_result(verdict: GateVerdict, version: str) -> dg.AssetCheckResult:
    """The blocking check's result: the verdict, each criterion beside its threshold, the version."""
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.reason,
        metadata={"criteria": dg.MetadataValue.md(gate_table(verdict)), "version": int(version)},
    )
