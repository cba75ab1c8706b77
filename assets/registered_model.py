"""registered_model: the fine-tuned model as a version in the MLflow registry, promoted or not."""

import json
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._drops import by_drop
from resources import chat_model
from resources.mlflow_registry import CHALLENGER, MlflowRegistry
from resources.records import RecordSet

CHAT_MODEL_CODE = Path(chat_model.__file__)


class GateConfig(dg.ConfigurableResource):
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


DEFAULT_MIN_IMPROVEMENT = {"json": 0.05, "open_ended": 0.01}


def gate_verdict(evaluation: dict, gate: GateConfig) -> tuple[bool, str, list[dict]]:
    """Whether the challenger may become champion, why (in words, for a tag), and each criterion
    with its value beside its threshold. It must beat the base by more than `min_improvement` on
    the primary metric, the current champion (scored on the same eval set) by more than
    `min_gain_over_champion`, and keep forgetting within `max_forgetting_pct`."""
    primary = evaluation["primary_metric"]
    tuned, base = evaluation["tuned"][primary], evaluation["base"][primary]
    margin = gate.min_improvement
    if margin is None:
        margin = DEFAULT_MIN_IMPROVEMENT[evaluation.get("task_type", "open_ended")]
    rows = [
        {"criterion": f"{primary} vs base", "value": tuned, "threshold": f"> {base:.4f} + {margin}",
         "passed": tuned > base + margin},
    ]  # fmt: skip
    champion = evaluation.get("champion")
    if champion is not None and primary in champion["metrics"]:
        best = champion["metrics"][primary]
        rows.append(
            {"criterion": f"{primary} vs champion v{champion['version']}", "value": tuned,
             "threshold": f"> {best:.4f} + {gate.min_gain_over_champion}",
             "passed": tuned > best + gate.min_gain_over_champion}
        )  # fmt: skip
    forgetting = evaluation["forgetting_pct"]
    rows.append(
        {"criterion": "probe perplexity change %", "value": forgetting,
         "threshold": f"<= {gate.max_forgetting_pct}", "passed": forgetting <= gate.max_forgetting_pct}
    )  # fmt: skip
    failed = [r for r in rows if not r["passed"]]
    if failed:
        reason = "; ".join(f"{r['criterion']}: {r['value']:.4f}, needs {r['threshold']}" for r in failed)
        return False, reason, rows
    return True, "; ".join(f"{r['criterion']}: {r['value']:.4f} ({r['threshold']})" for r in rows), rows


def gate_table(rows: list[dict]) -> str:
    lines = ["| criterion | value | threshold | passed |", "|---|---|---|---|"]
    lines += [
        f"| {r['criterion']} | {r['value']:.4f} | {r['threshold']} | {'yes' if r['passed'] else 'no'} |" for r in rows
    ]
    return "\n".join(lines)


def model_card(name: str, version_hint: str, evaluation: dict, data: dict, base_model: str, preset: str,
               verdict: tuple[bool, str]) -> str:  # fmt: skip
    """The markdown card logged with each version: data, metrics against base, intended use, limits."""
    from assets.model_evaluation import metrics_table

    primary = evaluation["primary_metric"]
    champion = evaluation.get("champion")
    return f"""# {name} {version_hint}

Fine-tuned from `{base_model}` with a LoRA adapter (TRL SFTTrainer), preset `{preset}`, by the
fine-tuning pipeline. Gate: **{"passed" if verdict[0] else "not passed"}** ({verdict[1]}).

## Data
- Drops: {data["drops"]}
- Rows: {data["rows_raw"]} raw, {data["rows_valid"]} valid, {data["rows_rejected"]} rejected,
  {data["rows_excluded"]} excluded as repeats of earlier drops
- Train / eval examples: {data["train_rows"]} / {evaluation["eval_examples"]}
  (split by a hash of the normalized prompt; train set hash `{data["train_set_hash"]}`,
  eval set hash `{evaluation["eval_set_hash"]}`)

## Evaluation ({evaluation["task_type"]} task, primary metric `{primary}`)
{metrics_table(evaluation["base"], evaluation["tuned"], primary, champion and champion["metrics"])}

Forgetting: perplexity on a general-text probe changed by {evaluation["forgetting_pct"]:+.1f}%.

## Intended use
Answering prompts like those in its training data (same instruction style, same task), through
the chat interface of the logged model (`mlflow models serve -m models:/{name}@champion`).

## Limits
- Scored on {evaluation["eval_examples"]} held-out examples of the same distribution as training;
  quality on other inputs is unknown.
- A {base_model.split("/")[-1]} base: small, with the base model's knowledge and biases.
- Rows flagged for possible personal data (the `personal_data_scan` check) were trained on unless
  the validation setting `pii: redact` was used; the model may reproduce them.
"""


def flat_params(prefix: str, values: dict) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in values.items()}


def serving_requirements() -> list[str]:
    import mlflow
    import torch
    import transformers

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
    ]


# Register once a new evaluation exists (the evaluation only updates after a retraining). The
# per-drop inputs only feed the data counts; held-back drops are missing partitions there.
NEW_EVALUATION = dg.AssetSelection.assets("model_evaluation")
REGISTER_AFTER_EVALUATION = (
    dg.AutomationCondition.any_deps_updated().allow(NEW_EVALUATION).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("raw_records", "rejected_records"))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)
ALL_DROPS = {"allow_missing_partitions": True}
GATE_CHECK = "promotion_gate"


def is_transient(error: Exception) -> bool:
    """Errors worth a retry: the tracking server could not be reached, not a mistake in the request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or "Max retries" in str(error)
    return False


def lineage_rows(pairs: RecordSet) -> pd.DataFrame:
    """What a version learned from and was scored on: one row per example, pointing at its raw line."""
    return pairs.frame(columns=["example_id", "split", "kind", "drop", "source_file", "source_line"])


@dg.asset(
    group_name="model",
    kinds={"mlflow"},
    ins={"raw_records": dg.AssetIn(metadata=ALL_DROPS), "rejected_records": dg.AssetIn(metadata=ALL_DROPS)},
    automation_condition=REGISTER_AFTER_EVALUATION,
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="registered_model",
            blocking=True,
            description="The promotion gate: the new version beats the base and the champion on the primary "
            "metric, within the forgetting budget. Blocks champion_model; the version stays challenger.",
        )
    ],
)
def registered_model(
    context: dg.AssetExecutionContext,
    gate: GateConfig,
    raw_records: Any,
    rejected_records: Any,
    instruction_pairs: RecordSet,
    base_model: str,
    fine_tuned_model: dict,
    model_evaluation: dict,
    mlflow_registry: MlflowRegistry,
) -> dict:
    """A new version of the registered model in MLflow, alias `challenger`: an MLflow run with the
    data counts, training settings, base/tuned/champion metrics, loss curve, sample generations and
    a model card; the merged model logged as a chat model that `mlflow models serve` answers. The
    promotion gate (blocking check `promotion_gate`) decides whether `champion_model` may move the
    champion alias; its verdict and reason are tags on the version. The version's tags name the drops,
    the training set's content hash, the Dagster run and the validations the data passed; the run's
    `lineage/examples.parquet` lists every example's raw file and line. The value names the version
    and the verdict.

    A tracking server that cannot be reached is retried (three times, backing off); any other
    failure is final.
    """
    try:
        value, metadata, check = register(
            context, gate, raw_records, rejected_records, instruction_pairs, base_model,
            fine_tuned_model, model_evaluation, mlflow_registry,
        )  # fmt: skip
    except Exception as error:
        if is_transient(error):
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=10) from error
        raise
    yield dg.Output(value, metadata=metadata)
    yield check


def register(
    context, gate, raw_records, rejected_records, instruction_pairs, base_model, fine_tuned_model,
    model_evaluation, mlflow_registry,
) -> dict:  # fmt: skip
    import mlflow

    primary = model_evaluation["primary_metric"]
    base, tuned = model_evaluation["base"], model_evaluation["tuned"]
    pairs = instruction_pairs.meta
    raw_records, rejected_records = by_drop(raw_records), by_drop(rejected_records)
    used = pairs["drops"]
    drops = ",".join(used)
    run_id = context.run.run_id
    rows_raw = sum(len(raw_records[d]) for d in used if raw_records.get(d) is not None)
    rows_rejected = sum(len(rejected_records[d]) for d in used if rejected_records.get(d) is not None)
    validations = pairs["validations"]

    promote, reason, rows = gate_verdict(model_evaluation, gate)
    data = {
        "drops": drops,
        "rows_raw": rows_raw,
        "rows_valid": len(instruction_pairs),
        "rows_rejected": rows_rejected,
        "rows_excluded": pairs["excluded_duplicates"],
        "train_rows": pairs["train_rows"],
        "train_set_hash": pairs["train_set_hash"],
    }
    champion = model_evaluation.get("champion")

    with mlflow_registry.start_run(
        run_name=f"{mlflow_registry.model_name}-{run_id[:8]}",
        tags={"dagster.run_id": run_id, "eval.primary_metric": primary},
    ) as run:
        mlflow.log_params(
            {
                "data.rows_raw": rows_raw,
                "data.rows_valid": data["rows_valid"],
                "data.rows_rejected": rows_rejected,
                "data.rows_excluded": data["rows_excluded"],
                "data.train_rows": data["train_rows"],
                "data.eval_rows": model_evaluation["eval_examples"],
                "data.train_set_hash": data["train_set_hash"],
                "data.eval_set_hash": model_evaluation["eval_set_hash"],
                "data.drops": drops,
                "preset": fine_tuned_model["preset"],
                "base_model": base_model,
                "train.max_length": fine_tuned_model["max_length"],
                "train.device": fine_tuned_model["device"],
                **flat_params("train", {k: v for k, v in fine_tuned_model["settings"].items() if k != "preset"}),
            }
        )
        mlflow.log_metrics({f"base.{k}": v for k, v in base.items()})
        mlflow.log_metrics({f"tuned.{k}": v for k, v in tuned.items()})
        if champion is not None:
            mlflow.log_metrics({f"champion.{k}": v for k, v in champion["metrics"].items()})
        mlflow.log_metric("forgetting_pct", model_evaluation["forgetting_pct"])
        for name, speed in model_evaluation["generation_tokens_per_second"].items():
            mlflow.log_metric(f"generation.tokens_per_second.{name}", speed)
        mlflow.log_metrics(
            {
                "train.loss_mean": fine_tuned_model["train_loss"],
                "train.seconds": fine_tuned_model["train_seconds"],
            }
        )
        for step, loss in fine_tuned_model["loss_curve"]:
            mlflow.log_metric("train.loss", loss, step=step)
        mlflow.log_artifact(fine_tuned_model["loss_curve_png"], "training")
        mlflow.log_table(pd.DataFrame(model_evaluation["samples"]), "eval/samples.json")
        mlflow.log_dict({k: v for k, v in model_evaluation.items() if k != "samples"}, "eval/metrics.json")
        mlflow.log_artifacts(fine_tuned_model["adapter_dir"], "adapter")
        mlflow.log_dict(validations, "lineage/validations.json")
        with tempfile.TemporaryDirectory() as tmp:
            examples = Path(tmp) / "examples.parquet"
            lineage_rows(instruction_pairs).to_parquet(examples, index=False)
            mlflow.log_artifact(str(examples), "lineage")
        # A pyfunc logged as code: chat messages in, reply out, with max_new_tokens and temperature
        # as per-request params declared in the signature (greedy by default, as evaluated).
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(CHAT_MODEL_CODE),
            artifacts={"model": fine_tuned_model["merged_dir"]},
            signature=chat_model.signature(),
            pip_requirements=serving_requirements(),
        )
        card = model_card(
            mlflow_registry.model_name, f"(run {run_id[:8]})", model_evaluation, data, base_model,
            fine_tuned_model["preset"], (promote, reason),
        )  # fmt: skip
        mlflow.log_text(card, "model_card.md")
        mlflow.set_tags({"gate.passed": str(promote).lower(), "gate.reason": reason})

    version = mlflow.register_model(
        info.model_uri,
        mlflow_registry.model_name,
        tags={
            "eval.settings_hash": model_evaluation["settings_hash"],
            "eval.forgetting_pct": f"{model_evaluation['forgetting_pct']:.2f}",
            "dagster.run_id": run_id,
            "data.drops": drops,
            "data.train_set_hash": data["train_set_hash"],
            "data.eval_set_hash": model_evaluation["eval_set_hash"],
            "data.validations": json.dumps(
                {d: ["/".join(Path(p).parts[-3:]) for p in v] for d, v in validations.items()}
            ),
            "base_model": base_model,
            "preset": fine_tuned_model["preset"],
            "eval.primary_metric": primary,
            f"eval.{primary}": f"{tuned[primary]:.4f}",
            "gate.passed": str(promote).lower(),
            "gate.reason": reason,
        },
    )
    mlflow_registry.client().update_model_version(mlflow_registry.model_name, version.version, description=card)
    mlflow_registry.set_alias(CHALLENGER, version.version)

    metadata = {
        "model": mlflow_registry.model_name,
        "version": int(version.version),
        "aliases": CHALLENGER,
        "gate_passed": promote,
        "reason": reason,
        f"base_{primary}": base[primary],
        f"tuned_{primary}": tuned[primary],
        "mlflow_run_id": run.info.run_id,
        "model_uri": f"models:/{mlflow_registry.model_name}/{version.version}",
        "model_card": dg.MetadataValue.md(card),
    }
    value = {
        "model_name": mlflow_registry.model_name,
        "version": str(version.version),
        "gate": {"passed": promote, "reason": reason},
        "reason": reason,
        "mlflow_run_id": run.info.run_id,
        "primary_metric": primary,
        "base": base[primary],
        "tuned": tuned[primary],
    }
    check = dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=promote,
        severity=dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={"criteria": dg.MetadataValue.md(gate_table(rows)), "version": int(version.version)},
    )
    return value, metadata, check
