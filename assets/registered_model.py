"""registered_model: the candidate model as a version in the MLflow registry, promoted or not."""

from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd

from assets.domain import tool_calls
from assets.domain.drops import by_drop
from assets.domain.evaluation import ITEMS_ARTIFACT, SAMPLES_ARTIFACT
from assets.domain.lineage import DataCounts, RunLineage, base_model_name, model_card
from assets.domain.metrics import comparison_rows, slice_rows
from assets.domain.values import Evaluation, RegisteredVersion, TrainedModel, short_run_id
from data_checks.promotion_gate import GATE_CHECK_SPEC, GateConfig, gate_check_result, gate_verdict
from resources.mlflow_registry import CHALLENGER, MlflowRegistry, TrackedRun, is_transient
from resources.models import ModelLoader
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
# The models compared, in the order the table and the chart show them.
MODELS = ("base", "tuned", "champion")
# The columns each split's MLflow dataset describes (its schema and profile; the rows stay in Parquet).
DATASET_COLUMNS = ["example_id", "kind", "drop", "source_file", "source_line", "n_tokens"]


def lineage_rows(pairs: RecordSet) -> pd.DataFrame:
    """What a version learned from and was scored on: one row per example, pointing at its raw line."""
    return pairs.frame(columns=["example_id", "split", "kind", "drop", "source_file", "source_line"])


def data_counts(raw_records: Any, rejected_records: Any, pairs: RecordSet) -> DataCounts:
    """Rows raw, valid and rejected as bad data in the drops the pairs were built from (the
    rejected_records partitions also hold the rows left out for length, counted apart)."""
    summary = pairs.summary
    raw, rejected = by_drop(raw_records), by_drop(rejected_records)
    rows_raw = sum(len(raw[d]) for d in summary.drops if raw.get(d) is not None)
    rows_rejected = sum(len(rejected[d]) for d in summary.drops if rejected.get(d) is not None)
    bad_data = rows_rejected - summary.rows_left_out
    return DataCounts.of(summary, rows_raw=rows_raw, rows_valid=len(pairs), rows_rejected=bad_data)


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
    log_comparison(run, evaluation)
    log_datasets(run, lineage, pairs)
    run.log_table(pd.DataFrame(list(evaluation.samples)), SAMPLES_ARTIFACT)
    run.log_dict(eval_summary(evaluation), "eval/metrics.json")
    run.log_dict({k: list(v) for k, v in evaluation.items.get("tuned", {}).items()}, ITEMS_ARTIFACT)
    if trained.adapter_dir is not None:  # none when all weights were trained: the logged model holds them
        run.log_folder(trained.adapter_dir, "adapter")
    run.log_dict(lineage.data.validations, "lineage/validations.json")
    run.log_parquet(lineage_rows(pairs), "examples.parquet", "lineage")
    # The served model renders requests with the same module training used, shipped beside its code.
    model_uri = run.log_chat_model(trained.merged_dir, code_paths=[tool_calls.__file__])
    run.log_text(card, "model_card.md")
    run.set_tags(lineage.gate_tags())
    return model_uri


def comparison_frame(evaluation: Evaluation) -> pd.DataFrame:
    """Base vs tuned vs champion, one row per metric, rounded for reading."""
    champion = evaluation.champion.metrics if evaluation.champion else None
    return pd.DataFrame(comparison_rows(evaluation.base, evaluation.tuned, evaluation.primary_metric, champion))


def bar_panels(plt, sizes: list[int], height: float):
    """A figure of side-by-side panels, each as wide as its number of bar groups (`sizes`), and its axes."""
    widths = [max(size, 2) for size in sizes]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 + 0.6 * sum(widths), height), dpi=90, width_ratios=widths)
    return fig, list(axes) if len(sizes) > 1 else [axes]


def grouped_bars(ax, part: pd.DataFrame, models: list[str]) -> list[float]:
    """One group of bars per row of `part`, a bar per model (its column); the groups' centres, for labels."""
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ax.bar([x + i * width for x in range(len(part))], part[model].fillna(0), width, label=model)
    return [x + width * (len(models) - 1) / 2 for x in range(len(part))]


def comparison_chart(frame: pd.DataFrame):
    """One grouped bar chart of the comparison: a group of bars (base, tuned, champion) per metric;
    scores between 0 and 1 on the left, losses, perplexities and the like on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if m in frame and frame[m].notna().any()]
    bounded = frame[models].fillna(0).apply(lambda row: row.between(0, 1).all(), axis=1)
    parts = [(frame[bounded], "score (0-1)"), (frame[~bounded], "value")]
    parts = [(part, label) for part, label in parts if len(part)]
    fig, axes = bar_panels(plt, [len(part) for part, _ in parts], 3.6)
    for ax, (part, label) in zip(axes, parts):
        ax.set_xticks(grouped_bars(ax, part, models), part["metric"], rotation=30)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(models, loc="upper center", ncol=len(models))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def slices_frame(evaluation: Evaluation) -> pd.DataFrame:
    """Every per-item metric per drop, source file and category (`slice_rows`), rounded for reading;
    no rows when no slice field has more than one value."""
    ev = evaluation
    return pd.DataFrame(slice_rows(ev.model_items, ev.slices, ev.primary_metric, ev.pair_slices))


def charted_slices(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per slice field (in the frame's order), the rows its chart panel shows: its primary metric's,
    or its first metric's when it has none (a field that only slices preference pairs)."""
    parts = []
    for name in dict.fromkeys(frame["slice"]):
        rows = frame[frame["slice"] == name]
        metric = (rows[rows["primary"]] if rows["primary"].any() else rows)["metric"].iloc[0]
        parts.append((name, rows[rows["metric"] == metric]))
    return parts


def slices_chart(frame: pd.DataFrame):
    """The primary metric per slice (or, for a slice field that has none, as of preference pairs, its
    first metric): one panel per slice field, a group of bars (base, tuned, champion) per value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = charted_slices(frame)
    models = [m for m in MODELS if m in frame and frame[m].notna().any()]
    fig, axes = bar_panels(plt, [len(part) for _, part in parts], 3.8)
    for ax, (name, part) in zip(axes, parts):
        labels = [f"{value} ({n})" for value, n in zip(part["value"], part["items"])]
        ax.set_xticks(grouped_bars(ax, part, models), labels, rotation=30, ha="right")
        ax.set_title(f"{part['metric'].iloc[0]} per {name}")
        if (part[models].fillna(0) >= 0).all().all():  # scores start at 0; a margin may be below it
            ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(models, loc="upper center", ncol=len(models))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def log_comparison(run: TrackedRun, evaluation: Evaluation) -> None:
    """The comparison as one table (CSV, shown as a table in the run's artifacts) and one chart; the
    same per slice (`eval/slices.csv`, `eval/slices.png`) when the eval items have slices."""
    import matplotlib.pyplot as plt

    frame = comparison_frame(evaluation)
    run.log_text(frame.to_csv(index=False), "eval/comparison.csv")
    figure = comparison_chart(frame)
    run.log_figure(figure, "eval/comparison.png")
    plt.close(figure)
    slices = slices_frame(evaluation)
    if len(slices):
        run.log_text(slices.to_csv(index=False), "eval/slices.csv")
        figure = slices_chart(slices)
        run.log_figure(figure, "eval/slices.png")
        plt.close(figure)


def log_datasets(run: TrackedRun, lineage: RunLineage, pairs: RecordSet) -> None:
    """The train and eval splits as the run's MLflow datasets, each named and digested by its
    content hash (the same hashes as the version's tags)."""
    data, ev = lineage.data, lineage.evaluation
    for split, digest, context in (
        ("train", data.train_set_hash, "training"),
        ("eval", ev.eval_set_hash, "evaluation"),
    ):
        frame = pairs.frame(columns=DATASET_COLUMNS, where=[("split", "=", split)])
        run.log_dataset(frame, f"instruction_pairs.{split}", digest, context, source=pairs.path)


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
    models: ModelLoader,
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

    A tracking server that cannot be reached is retried by MLflow itself (each request, backing off:
    MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR), then the step fails saying
    so, with nothing registered and no alias moved; any other failure is final at once.
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
        base_model_name=base_model_name(models.base_model),
        dagster_run_url=mlflow_registry.dagster_run_url(run_id),
        base_notes=tuple(models.base_notes(base_model)),
    )
    try:
        registered, card = register(lineage, instruction_pairs, mlflow_registry)
    except Exception as error:
        if is_transient(error):
            # MLflow has retried each request already (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backing off).
            raise dg.Failure(mlflow_registry.unreachable_message(error), allow_retries=False) from error
        raise
    yield dg.Output(registered, metadata=output_metadata(lineage, registered, mlflow_registry, card))
    yield gate_check_result(lineage.gate, registered.version)


def output_metadata(lineage: RunLineage, registered: RegisteredVersion, registry: MlflowRegistry, card: str) -> dict:
    """The registration's Dagster metadata, with links to its MLflow run and model version."""
    return lineage.dagster_metadata(registered.version, registered.mlflow_run_id) | {
        "mlflow_run": dg.MetadataValue.url(registry.run_url(registered.mlflow_run_id)),
        "mlflow_model_version": dg.MetadataValue.url(registry.version_url(registered.version)),
        "aliases": CHALLENGER,
        "model_card": dg.MetadataValue.md(card),
    }


def model_description(lineage: RunLineage, model_url: str) -> str:
    """The registered model's own description: what it is, how its versions come and get promoted."""
    ev = lineage.evaluation
    return (
        f"Fine-tuned from `{lineage.base_name}` by the fine-tuning pipeline (Dagster), one version per "
        f"training run, each with its model card, metrics and the Dagster run that made it. Alias "
        f"`challenger`: the latest version; alias `champion`: the version to serve, moved only when the "
        f"promotion gate passed (`{ev.primary_metric}` against the base and the champion, forgetting), "
        f"or by hand with `make promote`. Latest: [Dagster run]({lineage.dagster_run_url}); "
        f"[all versions]({model_url})."
    )


def model_tags(lineage: RunLineage) -> dict[str, str]:
    ev = lineage.evaluation
    return {"base_model": lineage.base_name, "task_type": ev.task_type, "primary_metric": ev.primary_metric,
            "pipeline": "dagster fine-tuning", "train.method": lineage.trained.method}  # fmt: skip


def register(lineage: RunLineage, pairs: RecordSet, registry: MlflowRegistry) -> tuple[RegisteredVersion, str]:
    """Log the run, register its chat model as a new version with alias `challenger`; returns the
    version and its model card."""
    card = model_card(lineage, f"(run {short_run_id(lineage.dagster_run_id)})")
    run_name = registry.training_run_name(lineage.dagster_run_id)
    # The training's own run, where its curves already are (a new run only for a model trained
    # before training reported live).
    with registry.start_run(run_name=run_name, tags=lineage.run_tags(), run_id=lineage.trained.mlflow_run_id) as run:
        model_uri = log_run(run, lineage, pairs, card)
        run.describe(card)
    version = registry.register_version(model_uri, lineage.version_tags(), description=card, alias=CHALLENGER)
    registry.describe_model(model_description(lineage, registry.model_route()), model_tags(lineage))
    gate_metrics = [k for k in lineage.mlflow_metrics() if k.startswith("gate.")]
    registry.save_gate_view(gate_metrics, list(lineage.gate_tags()))
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
