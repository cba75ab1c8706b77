"""registered_model: the candidate model as a version in the MLflow registry, promoted or not."""

from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd

from assets.domain import tool_calls
from assets.domain.drops import by_drop
from assets.domain.lineage import DataCounts, RunLineage, model_card
from assets.domain.values import Evaluation, RegisteredVersion, TrainedModel, short_run_id
from data_checks.promotion_gate import GATE_CHECK_SPEC, GateConfig, gate_check_result, gate_verdict
from resources.mlflow_registry import CHALLENGER, MlflowRegistry, TrackedRun, is_transient
from resources.records import RecordSet

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
# Transient tracking-server errors: how often and how long apart registration is retried.
RETRIES, RETRY_SECONDS = 3, 10


def lineage_rows(pairs: RecordSet) -> pd.DataFrame:
    """What a version learned from and was scored on: one row per example, pointing at its raw line."""
    return pairs.frame(columns=["example_id", "split", "kind", "drop", "source_file", "source_line"])


def data_counts(raw_records: Any, rejected_records: Any, pairs: RecordSet) -> DataCounts:
    """Rows raw, valid and rejected in the drops the pairs were built from."""
    summary = pairs.summary
    raw, rejected = by_drop(raw_records), by_drop(rejected_records)
    rows_raw = sum(len(raw[d]) for d in summary.drops if raw.get(d) is not None)
    rows_rejected = sum(len(rejected[d]) for d in summary.drops if rejected.get(d) is not None)
    return DataCounts.of(summary, rows_raw=rows_raw, rows_valid=len(pairs), rows_rejected=rows_rejected)


def log_run(run: TrackedRun, lineage: RunLineage, pairs: RecordSet, card: str) -> str:
    """Everything a registered version's MLflow run holds; returns the logged chat model's URI."""
    trained, evaluation = lineage.trained, lineage.evaluation
    run.log_params(lineage.mlflow_params())
    run.log_metrics(lineage.mlflow_metrics())
    if trained.mlflow_run_id is None:  # otherwise the training logged its curve as it went
        run.log_series("train.loss", trained.loss_curve)
    if trained.loss_curve_png:  # none when no SFT ran (method dpo)
        run.log_file(trained.loss_curve_png, "training")
    if trained.preference is not None and trained.mlflow_run_id is None:  # else logged live, as for SFT
        run.log_series("dpo.loss", trained.preference.loss_curve)
    run.log_table(pd.DataFrame(list(evaluation.samples)), "eval/samples.json")
    run.log_dict(eval_summary(evaluation), "eval/metrics.json")
    if trained.adapter_dir is not None:  # none when all weights were trained: the logged model holds them
        run.log_folder(trained.adapter_dir, "adapter")
    run.log_dict(lineage.data.validations, "lineage/validations.json")
    run.log_parquet(lineage_rows(pairs), "examples.parquet", "lineage")
    # The served model renders requests with the same module training used, shipped beside its code.
    model_uri = run.log_chat_model(trained.merged_dir, code_paths=[tool_calls.__file__])
    run.log_text(card, "model_card.md")
    run.set_tags(lineage.gate_tags())
    return model_uri


def eval_summary(evaluation: Evaluation) -> dict:
    """The evaluation as JSON (without the samples, logged as a table of their own)."""
    return {k: v for k, v in asdict(evaluation).items() if k != "samples"}


@dg.asset(
    group_name="model",
    kinds={"mlflow"},
    ins={"raw_records": dg.AssetIn(metadata=ALL_DROPS), "rejected_records": dg.AssetIn(metadata=ALL_DROPS)},
    automation_condition=REGISTER_AFTER_EVALUATION,
    check_specs=[GATE_CHECK_SPEC],
)
def registered_model(
    context: dg.AssetExecutionContext,
    gate: GateConfig,
    raw_records: Any,
    rejected_records: Any,
    instruction_pairs: RecordSet,
    base_model: str,
    preference_tuned_model: TrainedModel,
    model_evaluation: Evaluation,
    mlflow_registry: MlflowRegistry,
):
    """The candidate (`preference_tuned_model`) as a new version of the registered model in MLflow,
    alias `challenger`: an MLflow run with the data counts, training settings (`train.method`,
    `train.adapter`), base/tuned/champion metrics, loss curves (SFT, DPO), sample generations and
    a model card; the merged model logged as a chat model that `mlflow models serve` answers. The
    promotion gate (blocking check `promotion_gate`) decides whether `champion_model` may move the
    champion alias; its verdict and reason are tags on the version. The version's tags name the drops,
    the training set's content hash, the Dagster run and the validations the data passed; the run's
    `lineage/examples.parquet` lists every example's raw file and line. The value names the version
    and the verdict.

    A tracking server that cannot be reached is retried (three times, backing off); any other
    failure is final.
    """
    run_id = context.run.run_id
    lineage = RunLineage(
        model_name=mlflow_registry.model_name,
        dagster_run_id=run_id,
        base_model=base_model,
        data=data_counts(raw_records, rejected_records, instruction_pairs),
        trained=preference_tuned_model,
        evaluation=model_evaluation,
        gate=gate_verdict(model_evaluation, gate),
    )
    try:
        registered, card = register(lineage, instruction_pairs, mlflow_registry)
    except Exception as error:
        if is_transient(error):
            raise dg.RetryRequested(max_retries=RETRIES, seconds_to_wait=RETRY_SECONDS) from error
        raise
    metadata = lineage.dagster_metadata(registered.version, registered.mlflow_run_id)
    yield dg.Output(registered, metadata={**metadata, "aliases": CHALLENGER, "model_card": dg.MetadataValue.md(card)})
    yield gate_check_result(lineage.gate, registered.version)


def register(lineage: RunLineage, pairs: RecordSet, registry: MlflowRegistry) -> tuple[RegisteredVersion, str]:
    """Log the run, register its chat model as a new version with alias `challenger`; returns the
    version and its model card."""
    card = model_card(lineage, f"(run {short_run_id(lineage.dagster_run_id)})")
    run_name = f"{lineage.model_name}-{short_run_id(lineage.dagster_run_id)}"
    # The training's own run, where its curves already are (a new run only for a model trained
    # before training reported live).
    with registry.start_run(run_name=run_name, tags=lineage.run_tags(), run_id=lineage.trained.mlflow_run_id) as run:
        model_uri = log_run(run, lineage, pairs, card)
    version = registry.register_version(model_uri, lineage.version_tags(), description=card)
    registry.set_alias(CHALLENGER, version)
    evaluation = lineage.evaluation
    registered = RegisteredVersion(
        model_name=lineage.model_name,
        version=version,
        mlflow_run_id=run.run_id,
        gate=lineage.gate,
        primary_metric=evaluation.primary_metric,
        base_value=evaluation.base_primary,
        tuned_value=evaluation.tuned_primary,
    )
    return registered, card
