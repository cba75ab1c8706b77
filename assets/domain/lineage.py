"""One record per training run's registration: what the version learned from, how it was trained,
how it scored and what the gate said. Built once in `registered_model`; the MLflow params, run and
version tags, the model card and the Dagster metadata are all derived from it, so a fact (a hash,
a drop list, a verdict) is stated in one place and its views cannot disagree.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from assets.domain.metrics import SHOWN_DECIMALS, metrics_table, slice_rows, slices_table
from assets.domain.values import Evaluation, GateVerdict, PairsSummary, TrainedModel, short_run_id
from assets.domain.warm_start import PARENT_VERSION_TAG

# How many trailing path parts name a Great Expectations result in a version tag.
VALIDATION_PATH_PARTS = 3
# The version tag saying what the logged `adapter` applies to: "base_model" (the version's base),
# "sft_model" (its SFT stage's merged model, after sft+dpo) or "none" (all weights were trained).
ADAPTER_ON_TAG = "model.adapter_on"
# How each training method reads in the model card.
METHOD_WORDS = {
    "sft": "supervised fine-tuning (TRL SFTTrainer)",
    "dpo": "preference training on the base model (TRL DPOTrainer)",
    "sft+dpo": "supervised fine-tuning (TRL SFTTrainer), then preference training (TRL DPOTrainer) on the SFT model",
}


# The version tag holding the prepared base model's folder, which a champion's adapter must match
# to be re-scored on the loaded base; `base_model` names the model for people.
BASE_MODEL_PATH_TAG = "base_model.path"
# FT_BASE_MODEL's prefix for the model bundled in a Python package.
BUNDLED_PREFIX = "bundled:"


def base_model_name(source: str) -> str:
    """How a base model is named to people: a hub id as it is, a bundled model by its name, a local
    folder by its own name (not the path it happens to sit at)."""
    if source.startswith(BUNDLED_PREFIX):
        return source.removeprefix(BUNDLED_PREFIX)
    if source.startswith(("/", ".", "~", "file:")) or "\\" in source:
        return Path(source.rstrip("/")).name
    return source


def adapter_on(trained: TrainedModel, base_model: str) -> str:
    """What `trained`'s adapter applies to, as the ADAPTER_ON_TAG value."""
    if trained.adapter_dir is None:
        return "none"
    return "base_model" if trained.adapter_applies_to(base_model) else "sft_model"


@dataclass(frozen=True)
class DataCounts:
    """Rows of the drops a version was trained on, from raw landing to the train split."""

    drops: tuple[str, ...]
    rows_raw: int
    rows_valid: int
    rows_rejected: int
    rows_excluded: int
    train_rows: int
    train_set_hash: str
    validations: dict[str, list[str]]
    rows_truncated: int = 0
    """Rows cut to fit max_tokens (they trained, cut)."""
    rows_left_out: int = 0
    """Rows left out for length: good data over the budget, not among `rows_rejected` (bad data)."""
    mixing: tuple[dict, ...] = ()
    """The mixing rules the train rows were sampled by (`PairsSummary.mixing`); empty: each row once."""
    mixing_table: tuple[dict, ...] = ()
    """Per rule, the train rows it matched and the rows expected to train per pass (`PairsSummary.mixing_table`)."""
    mixing_hash: str = ""

    @classmethod
    def of(cls, pairs: PairsSummary, rows_raw: int, rows_valid: int, rows_rejected: int) -> "DataCounts":
        return cls(
            drops=tuple(pairs.drops),
            rows_raw=rows_raw,
            rows_valid=rows_valid,
            rows_rejected=rows_rejected,
            rows_excluded=pairs.excluded_duplicates,
            train_rows=pairs.train_rows,
            train_set_hash=pairs.train_set_hash,
            validations=pairs.validations,
            rows_truncated=pairs.rows_truncated,
            rows_left_out=pairs.rows_left_out,
            mixing=pairs.mixing,
            mixing_table=pairs.mixing_table,
            mixing_hash=pairs.mixing_hash,
        )


@dataclass(frozen=True)
class RunLineage:
    """Everything a registered version states about itself."""

    model_name: str
    dagster_run_id: str
    base_model: str
    data: DataCounts
    trained: TrainedModel
    evaluation: Evaluation
    gate: GateVerdict
    base_model_name: str = ""
    """The base model as people name it (`base_model_name`); `base_model` is its prepared folder."""
    dagster_run_url: str = ""
    """The Dagster run in the Dagster UI, linked from MLflow."""
    base_notes: tuple[str, ...] = ()
    """What preparing the base model changed (a chat template given, end tokens added)."""

    @property
    def base_name(self) -> str:
        return self.base_model_name or base_model_name(self.base_model)

    @property
    def parent(self) -> str | None:
        """The registered version this one was trained from (`training.start_from: champion`), if any."""
        warm = self.trained.warm_start
        return warm.parent if warm is not None else None

    def mlflow_params(self) -> dict[str, str]:
        data, ev, trained = self.data, self.evaluation, self.trained
        params = {
            "data.rows_raw": data.rows_raw,
            "data.rows_valid": data.rows_valid,
            "data.rows_rejected": data.rows_rejected,
            "data.rows_excluded": data.rows_excluded,
            "data.rows_truncated": data.rows_truncated,
            "data.rows_left_out": data.rows_left_out,
            "data.train_rows": data.train_rows,
            "data.eval_rows": ev.eval_examples,
            "data.train_set_hash": data.train_set_hash,
            "data.eval_set_hash": ev.eval_set_hash,
            "data.drops": ",".join(data.drops),
            "preset": trained.preset,
            "base_model": self.base_name,
            "train.max_length": trained.max_length,
            "train.device": trained.device,
            "eval.max_new_tokens": ev.max_new_tokens,
            **{f"train.{k}": v for k, v in trained.settings.items()},
            # What ran ('auto' resolved), over the setting of the same name.
            "train.method": trained.method,
            "train.adapter": trained.adapter,
            **warm_start_params(trained),
            **mixing_params(data),
        }
        if trained.best_step is not None:  # SFT with validation: the checkpoint kept, and whether it stopped early
            params |= {"train.best_step": trained.best_step, "train.stopped_early": trained.stopped_early}
        if trained.preference is not None:
            stage = trained.preference
            params |= {"dpo.pairs": stage.pairs, "dpo.steps": stage.steps, "dpo.beta": stage.beta}
            params["dpo.learning_rate"] = stage.learning_rate
        if trained.reinforcement is not None:
            rl = trained.reinforcement
            params |= {"grpo.prompts": rl.prompts, "grpo.steps": rl.steps, "grpo.num_generations": rl.num_generations}
            params |= {
                "grpo.beta": rl.beta,
                "grpo.learning_rate": rl.learning_rate,
                "grpo.rewards": ",".join(rl.rewards),
            }
        return {k: str(v) for k, v in params.items()}

    def mlflow_metrics(self) -> dict[str, float]:
        ev, trained = self.evaluation, self.trained
        metrics = {f"base.{k}": v for k, v in ev.base.items()}
        metrics |= {f"tuned.{k}": v for k, v in ev.tuned.items()}
        if ev.champion is not None:
            metrics |= {f"champion.{k}": v for k, v in ev.champion.metrics.items()}
        metrics["forgetting_pct"] = ev.forgetting_pct
        for c in self.gate.criteria:  # each criterion's paired difference and interval, as columns of the runs list
            if c.key and c.low is not None:
                metrics |= {
                    f"gate.{c.key}.difference": c.value,
                    f"gate.{c.key}.low": c.low,
                    f"gate.{c.key}.high": c.high,
                }
        metrics["gate.passed"] = float(self.gate.passed)
        metrics |= {f"generation.tokens_per_second.{k}": v for k, v in ev.generation_tokens_per_second.items()}
        metrics |= {f"{k}.generations_cut": v for k, v in ev.generations_cut.items()}
        metrics |= {"train.loss_mean": trained.train_loss, "train.seconds": trained.train_seconds}
        if trained.best_validation_loss is not None:
            metrics["validation.best_loss"] = trained.best_validation_loss
        if trained.preference is not None:
            metrics |= {"dpo.loss_mean": trained.preference.train_loss, "dpo.seconds": trained.preference.train_seconds}
            if trained.preference.reward_accuracy is not None:
                metrics["dpo.reward_accuracy"] = trained.preference.reward_accuracy
        if trained.reinforcement is not None:
            rl = trained.reinforcement
            metrics["grpo.seconds"] = rl.train_seconds
            figures = {"grpo.reward_first": rl.first_reward, "grpo.reward_last": rl.last_reward, "grpo.kl_last": rl.kl}
            metrics |= {k: v for k, v in figures.items() if v is not None}
        return metrics

    def run_tags(self) -> dict[str, str]:
        return {"dagster.run_id": self.dagster_run_id, "eval.primary_metric": self.evaluation.primary_metric}

    def gate_tags(self) -> dict[str, str]:
        return {"gate.passed": str(self.gate.passed).lower(), "gate.reason": self.gate.reason}

    def version_tags(self) -> dict[str, str]:
        ev = self.evaluation
        validations = {
            drop: ["/".join(Path(p).parts[-VALIDATION_PATH_PARTS:]) for p in paths]
            for drop, paths in self.data.validations.items()
        }
        return {
            "eval.settings_hash": ev.settings_hash,
            "eval.forgetting_pct": f"{ev.forgetting_pct:.2f}",
            "dagster.run_id": self.dagster_run_id,
            **({"dagster.run_url": self.dagster_run_url} if self.dagster_run_url else {}),
            "data.drops": ",".join(self.data.drops),
            "data.train_set_hash": self.data.train_set_hash,
            **({"data.mixing_hash": self.data.mixing_hash} if self.data.mixing_hash else {}),
            "data.eval_set_hash": ev.eval_set_hash,
            "data.validations": json.dumps(validations),
            "base_model": self.base_name,
            BASE_MODEL_PATH_TAG: self.base_model,
            "preset": self.trained.preset,
            "train.method": self.trained.method,
            "train.adapter": self.trained.adapter,
            ADAPTER_ON_TAG: adapter_on(self.trained, self.base_model),
            **({PARENT_VERSION_TAG: self.parent} if self.parent else {}),
            "eval.primary_metric": ev.primary_metric,
            f"eval.{ev.primary_metric}": f"{ev.tuned_primary:.4f}",
            **self.gate_tags(),
        }

    def dagster_metadata(self, version: str, mlflow_run_id: str) -> dict:
        """The registration's materialization metadata (the model card is added by the asset)."""
        ev = self.evaluation
        return {
            "model": self.model_name,
            "version": int(version),
            "gate_passed": self.gate.passed,
            "reason": self.gate.reason,
            f"base_{ev.primary_metric}": round(ev.base_primary, SHOWN_DECIMALS),
            f"tuned_{ev.primary_metric}": round(ev.tuned_primary, SHOWN_DECIMALS),
            "mlflow_run_id": mlflow_run_id,
            "model_uri": f"models:/{self.model_name}/{version}",
        }


def gate_table(verdict: GateVerdict) -> str:
    """The criteria as markdown: each difference, its interval and its threshold."""
    lines = ["| criterion | difference | interval | items | threshold | passed |", "|---|---|---|---|---|---|"]
    for c in verdict.criteria:
        interval = f"[{c.low:+.4f}, {c.high:+.4f}]" if c.low is not None else "-"
        passed = "yes" if c.passed else "no" + (f": {c.note}" if c.note else "")
        lines.append(f"| {c.criterion} | {c.value:+.4f} | {interval} | {c.items} {c.unit} | {c.threshold} | {passed} |")
    return "\n".join(lines)


def preference_line(lineage: RunLineage) -> str:
    """The card's sentence on the second stage: DPO and its held-out pairs, or GRPO and its rewards."""
    stage, ev = lineage.trained.preference, lineage.evaluation
    if stage is None and lineage.trained.reinforcement is None:
        return ""
    if stage is None and lineage.trained.reinforcement is not None:
        rl = lineage.trained.reinforcement
        reward = f"; mean reward {rl.first_reward:.3f} -> {rl.last_reward:.3f}" if rl.reward_curve else ""
        return (
            f"\n\nGRPO: {rl.steps} steps on {rl.prompts} prompts, {rl.num_generations} answers each, rewards "
            f"{', '.join(rl.rewards)}, KL weight {rl.beta}{reward}."
        )
    line = f"\n\nDPO: {stage.steps} steps on {stage.pairs} preference pairs, beta {stage.beta}"
    if ev.preference_pairs:
        line += f"; scored on {ev.preference_pairs} held-out pairs (preference_accuracy, preference_margin above)"
    return line + "."


def warm_start_params(trained: TrainedModel) -> dict[str, object]:
    """The run params of a warm start: the parent version and the rows new to it and replayed."""
    warm = trained.warm_start
    if warm is None or warm.parent is None:
        return {}
    return {"train.parent_version": warm.parent, "data.new_rows": warm.new_rows, "data.replay_rows": warm.replay_rows}


def warm_start_line(lineage: RunLineage) -> str:
    """The card's sentence on what the version was trained from: its parent and the replay, when any."""
    warm = lineage.trained.warm_start
    if warm is None or warm.parent is None:
        return ""
    rows = f"{warm.new_rows} rows of drops new to it and {warm.replay_rows} of its {warm.old_rows} older rows replayed"
    if not warm.new_rows:
        rows = "the whole train split again (no drop was new to it)"
    return f"\nContinued from version {warm.parent} ({warm.how.split(': ', 1)[-1]}), on {rows}."


def mixing_params(data: DataCounts) -> dict[str, object]:
    """The run params of the mixing weights: the rules as JSON ('[]': every train row once) and, with
    rules, their hash, each rule's counts (`split.mixing_rows`) and the rows expected per pass."""
    params: dict[str, object] = {"split.mixing": json.dumps(list(data.mixing))}
    if data.mixing:
        params |= {"data.mixing_hash": data.mixing_hash, "split.mixing_rows": json.dumps(list(data.mixing_table))}
        params["data.train_rows_expected"] = data.mixing_table[-1]["expected_rows"]
    return params


def mixing_line(data: DataCounts) -> str:
    """The card's line on the mixing weights, when there are rules: each rule's rows and weight."""
    if not data.mixing:
        return ""
    *rules, total = data.mixing_table
    shown = "; ".join(f"`{r['rule']}` x{r['weight']:g} ({r['rows']} rows)" for r in rules)
    return (
        f"\n- Mixing (`split.mixing`, hash `{data.mixing_hash}`): {shown}; {total['rows']} train rows sampled to "
        f"about {total['expected_rows']:g} per pass (training.seed)"
    )


def dagster_link(lineage: RunLineage) -> str:
    """The card's link to the Dagster run that made the version, when its URL is known."""
    if not lineage.dagster_run_url:
        return ""
    return f"\nMade by Dagster run [{short_run_id(lineage.dagster_run_id)}]({lineage.dagster_run_url})."


def base_notes_line(lineage: RunLineage) -> str:
    """The base model's preparation in the card: its chat template and end tokens, when changed."""
    return "".join(f"{note}\n" for note in lineage.base_notes)


def slices_section(ev: Evaluation) -> str:
    """The card's per-slice results: the primary metric per drop, source file and category where the
    eval prompts hold more than one of them (`metrics.slice_rows`); every metric is in the run's
    `eval/slices.csv`. Empty when there is no breakdown."""
    rows = slice_rows(ev.model_items, ev.slices, ev.primary_metric, ev.pair_slices)
    shown = [row for row in rows if row["primary"]]
    if not shown:
        return ""
    return (
        f"\n### Per slice\n`{ev.primary_metric}` per slice of the eval prompts, to see where this version "
        f"gained or lost (every metric: the run's `eval/slices.csv`):\n\n{slices_table(shown)}\n"
    )


def model_card(lineage: RunLineage, title: str) -> str:
    """The markdown card logged with each version: data, metrics against base, intended use, limits."""
    ev, data, gate = lineage.evaluation, lineage.data, lineage.gate
    champion = ev.champion.metrics if ev.champion else None
    name, base_model = lineage.model_name, lineage.base_name
    return f"""# {name} {title}

Fine-tuned from `{base_model}` by {METHOD_WORDS.get(lineage.trained.method, lineage.trained.method)}, adapter
`{lineage.trained.adapter}`, preset `{lineage.trained.preset}`, by the fine-tuning pipeline.{warm_start_line(lineage)}
{base_notes_line(lineage)}Gate: **{"passed" if gate.passed else "not passed"}** ({gate.reason}).{dagster_link(lineage)}

## Data
- Drops: {",".join(data.drops)}
- Rows: {data.rows_raw} raw, {data.rows_valid} valid, {data.rows_rejected} rejected as bad data,
  {data.rows_left_out} left out for length, {data.rows_excluded} excluded as repeats of earlier
  drops; {data.rows_truncated} cut to fit the length budget
- Train / eval examples: {data.train_rows} / {ev.eval_examples}
  (split by a hash of the normalized prompt; train set hash `{data.train_set_hash}`,
  eval set hash `{ev.eval_set_hash}`){mixing_line(data)}

## Evaluation ({ev.task_type} task, primary metric `{ev.primary_metric}`)
{metrics_table(ev.base, ev.tuned, ev.primary_metric, champion)}

Forgetting: perplexity on a general-text probe changed by {ev.forgetting_pct:+.1f}%.{preference_line(lineage)}
{slices_section(ev)}
## Promotion gate
Each criterion on the paired difference (this version minus what it is compared with, item by item) and
its {gate.confidence:.0%} interval:

{gate_table(gate)}

## Intended use
Answering prompts like those in its training data (same instruction style, same task), through
the chat interface of the logged model (`mlflow models serve -m models:/{name}@champion`).

## Limits
- Scored on {ev.eval_examples} held-out examples of the same distribution as training;
  quality on other inputs is unknown.
- A {base_model.split("/")[-1]} base: small, with the base model's knowledge and biases.
- Rows flagged for possible personal data (the `personal_data_scan` check) were trained on unless
  the validation setting `pii: redact` was used; the model may reproduce them.
"""
