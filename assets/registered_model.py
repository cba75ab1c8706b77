"""registered_model: the fine-tuned model as a version in the MLflow registry, promoted or not."""

import json
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._drops import by_drop
from assets.instruction_pairs import content_hash
from resources.mlflow_registry import CHALLENGER, CHAMPION, MlflowRegistry


class GateConfig(dg.ConfigurableResource):
    min_improvement: float = Field(
        default=0.0,
        description="How much the tuned primary metric must exceed the base model's.",
    )
    min_gain_over_champion: float = Field(
        default=0.0,
        description="How much it must exceed the current champion's (0: any strict improvement).",
    )


def promotion_decision(
    primary: str,
    base: float,
    tuned: float,
    champion: float | None,
    min_improvement: float = 0.0,
    min_gain_over_champion: float = 0.0,
) -> tuple[bool, str]:
    """Whether the tuned model may become champion, and why, in words for a tag.

    It must beat the base model by more than `min_improvement` on the primary metric, and the
    current champion, when there is one, by more than `min_gain_over_champion`.
    """
    if not tuned > base + min_improvement:
        return (
            False,
            f"tuned {primary} {tuned:.4f} does not beat base {base:.4f} by more than {min_improvement}",
        )
    if champion is not None and not tuned > champion + min_gain_over_champion:
        return False, (
            f"tuned {primary} {tuned:.4f} does not beat champion {champion:.4f} by more than {min_gain_over_champion}"
        )
    versus = f"base {base:.4f}" + (f" and champion {champion:.4f}" if champion is not None else "")
    return True, f"tuned {primary} {tuned:.4f} beats {versus}"


def flat_params(prefix: str, values: dict) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in values.items()}


def serving_requirements() -> list[str]:
    import accelerate
    import torch
    import transformers

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"accelerate=={accelerate.__version__}",
    ]


def chat_pipeline(merged_dir: str):
    import torch
    from transformers import pipeline

    return pipeline("text-generation", model=merged_dir, dtype=torch.float32)


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


def is_transient(error: Exception) -> bool:
    """Errors worth a retry: the tracking server could not be reached, not a mistake in the request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or "Max retries" in str(error)
    return False


def lineage_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    """What a version learned from and was scored on: one row per example, pointing at its raw line."""
    columns = ["example_id", "split", "kind", "drop", "source_file", "source_line"]
    return pairs[columns].reset_index(drop=True)


@dg.asset(
    group_name="model",
    kinds={"mlflow"},
    ins={"raw_records": dg.AssetIn(metadata=ALL_DROPS), "rejected_records": dg.AssetIn(metadata=ALL_DROPS)},
    automation_condition=REGISTER_AFTER_EVALUATION,
)
def registered_model(
    context: dg.AssetExecutionContext,
    gate: GateConfig,
    raw_records: Any,
    rejected_records: Any,
    instruction_pairs: pd.DataFrame,
    base_model: str,
    fine_tuned_model: dict,
    model_evaluation: dict,
    mlflow_registry: MlflowRegistry,
) -> dict:
    """A new version of the registered model in MLflow: an MLflow run with the data counts,
    training settings, base and tuned metrics, loss curve and sample generations; the merged model
    logged as a chat model; alias `challenger` on the new version, and `champion` too when it beats
    the base and the current champion on the primary metric. The version's tags name the drops,
    the training set's content hash, the Dagster run and the validations the data passed; the run's
    `lineage/examples.parquet` lists every example's raw file and line. The value names the version
    and the verdict.

    A tracking server that cannot be reached is retried (three times, backing off); any other
    failure is final.
    """
    try:
        return register(
            context, gate, raw_records, rejected_records, instruction_pairs, base_model,
            fine_tuned_model, model_evaluation, mlflow_registry,
        )  # fmt: skip
    except Exception as error:
        if is_transient(error):
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=10) from error
        raise


def register(
    context, gate, raw_records, rejected_records, instruction_pairs, base_model, fine_tuned_model,
    model_evaluation, mlflow_registry,
) -> dict:  # fmt: skip
    import mlflow

    primary = model_evaluation["primary_metric"]
    base, tuned = model_evaluation["base"], model_evaluation["tuned"]
    train = instruction_pairs[(instruction_pairs["split"] == "train") & (instruction_pairs["kind"] == "sft")]
    train_hash = content_hash(train)
    raw_records, rejected_records = by_drop(raw_records), by_drop(rejected_records)
    used = sorted(instruction_pairs["drop"].unique())
    drops = ",".join(used)
    run_id = context.run.run_id
    rows_raw = sum(len(raw_records[d]) for d in used if raw_records.get(d) is not None)
    rows_rejected = sum(len(rejected_records[d]) for d in used if rejected_records.get(d) is not None)
    validations = {
        d: sorted(set(instruction_pairs.loc[instruction_pairs["drop"] == d, "gx_result"].dropna())) for d in used
    }

    champion = mlflow_registry.version_by_alias(CHAMPION)
    champion_value = None
    if champion is not None:
        champion_metrics = mlflow_registry.client().get_run(champion.run_id).data.metrics
        champion_value = champion_metrics.get(f"tuned.{primary}")
    promote, reason = promotion_decision(
        primary,
        base[primary],
        tuned[primary],
        champion_value,
        gate.min_improvement,
        gate.min_gain_over_champion,
    )

    with mlflow_registry.start_run(
        run_name=f"{mlflow_registry.model_name}-{run_id[:8]}",
        tags={"dagster.run_id": run_id, "eval.primary_metric": primary},
    ) as run:
        mlflow.log_params(
            {
                "data.rows_raw": rows_raw,
                "data.rows_valid": len(instruction_pairs),
                "data.rows_rejected": rows_rejected,
                "data.rows_excluded": int((instruction_pairs["split"] == "excluded").sum()),
                "data.train_rows": len(train),
                "data.eval_rows": model_evaluation["eval_examples"],
                "data.train_set_hash": train_hash,
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
        # MLflow's "log from a local checkpoint path" path breaks on transformers 5; a loaded
        # pipeline works and serves chat requests (task llm/v1/chat, OpenAI-style schema).
        info = mlflow.transformers.log_model(
            transformers_model=chat_pipeline(fine_tuned_model["merged_dir"]),
            name="model",
            task="llm/v1/chat",
            pip_requirements=serving_requirements(),
        )
        mlflow.set_tags({"gate.promoted": str(promote).lower(), "gate.reason": reason})

    version = mlflow.register_model(
        info.model_uri,
        mlflow_registry.model_name,
        tags={
            "dagster.run_id": run_id,
            "data.drops": drops,
            "data.train_set_hash": train_hash,
            "data.eval_set_hash": model_evaluation["eval_set_hash"],
            "data.validations": json.dumps(
                {d: ["/".join(Path(p).parts[-3:]) for p in v] for d, v in validations.items()}
            ),
            "base_model": base_model,
            "preset": fine_tuned_model["preset"],
            "eval.primary_metric": primary,
            f"eval.{primary}": f"{tuned[primary]:.4f}",
            "gate.promoted": str(promote).lower(),
            "gate.reason": reason,
        },
    )
    mlflow_registry.set_alias(CHALLENGER, version.version)
    if promote:
        mlflow_registry.set_alias(CHAMPION, version.version)

    aliases = [CHALLENGER] + ([CHAMPION] if promote else [])
    context.add_output_metadata(
        {
            "model": mlflow_registry.model_name,
            "version": int(version.version),
            "aliases": ", ".join(aliases),
            "promoted": promote,
            "reason": reason,
            f"base_{primary}": base[primary],
            f"tuned_{primary}": tuned[primary],
            "mlflow_run_id": run.info.run_id,
            "model_uri": f"models:/{mlflow_registry.model_name}/{version.version}",
        }
    )
    return {
        "model_name": mlflow_registry.model_name,
        "version": str(version.version),
        "aliases": aliases,
        "promoted": promote,
        "reason": reason,
        "mlflow_run_id": run.info.run_id,
        "primary_metric": primary,
        "base": base[primary],
        "tuned": tuned[primary],
    }
