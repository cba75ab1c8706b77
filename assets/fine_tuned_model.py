"""fine_tuned_model: the SFT stage, an adapter (or all weights) trained on the train split by the SFT
recipe (`assets/recipes/sft.py`, TRL's SFTTrainer) in a job of its own."""

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.domain.figures import shown_floats
from assets.domain.lineage import ADAPTER_ON_TAG, BASE_MODEL_PATH_TAG
from assets.domain.mixture import mixed
from assets.domain.preferences import chosen_conversations
from assets.domain.sweep import (
    PointResult,
    SweepConfig,
    SweepPoint,
    apply,
    best,
    comparison_chart,
    plan,
    point_metrics,
    points_frame,
    points_markdown,
)
from assets.domain.training import TrainingConfig, resolve_method, trains_sft
from assets.domain.validation_slice import with_validation
from assets.domain.values import TrainedModel
from assets.domain.warm_start import Parent, WarmStart, with_replay
from assets.recipes.launch import Launched, Recipe, RecipeTools, curve_markdown, curve_png, launch_recipe
from assets.recipes.sft import with_length_grouping
from resources.checkpoints import CheckpointStore
from resources.mlflow_registry import CHAMPION, MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet
from resources.state import StateStore
from resources.training_job import TrainingJobClient


def sft_examples(pairs: RecordSet, training: TrainingConfig) -> tuple[pd.DataFrame, str]:
    """What SFT trains on, and the method this run trains with (`training.method`, 'auto' resolved
    by the preference pairs in the train split): the train split's conversations, or, when it holds
    only preference pairs, each pair's prompt with its chosen reply."""
    train = pairs.frame(where=[("split", "=", "train"), ("kind", "=", "sft")])
    preferences = pairs.frame(where=[("split", "=", "train"), ("kind", "=", "preference")])
    method = resolve_method(training.method, len(preferences))
    if train.empty and not preferences.empty:
        train = chosen_conversations(preferences)
    if train.empty and trains_sft(method):
        raise ValueError("The train split of instruction_pairs holds no examples: nothing to fine-tune on.")

    train = mixed(train, pairs.summary.mixing, training.seed)  # split.mixing: each row as often as its weight
    return train, method


def adapter_matches(adapter_dir: str, training: TrainingConfig) -> bool:
    """Whether a saved adapter is of the kind and shape the settings ask for (rank, alpha, DoRA,
    rsLoRA, and the target modules when named): only then may a warm start train it on."""
    saved = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    same = (saved.get("r"), saved.get("lora_alpha"), bool(saved.get("use_dora")), bool(saved.get("use_rslora"))) == (
        training.lora_r, training.lora_alpha, training.adapter == "dora", training.adapter == "rslora",
    )  # fmt: skip
    targets = training.lora_target_modules
    if same and targets != "all-linear":
        same = set(saved.get("target_modules") or []) == {t.strip() for t in targets.split(",")}
    return same


def find_parent(
    training: TrainingConfig, base_model: str, tools: RecipeTools, adapter_ok: bool,
    asset_name: str = "fine_tuned_model",
) -> tuple[Parent | None, str]:  # fmt: skip
    """The version a retrain continues from (`training.start_from: champion`) and how it starts, in
    words; None (the base model) with the reason when it starts from the base. The champion's adapter
    trains on when it applies to this base model and has the settings' kind and shape (and
    `adapter_ok`: the SFT stage trains it); else a new adapter goes on its merged weights (all weights,
    for adapter 'full'). Its files are downloaded under FT_HOME/artifacts/fine_tuned_model/parent-v<N>/, which
    later stages read."""
    if training.start_from == "base":
        return None, "the base model (training.start_from: base)"
    version = tools.mlflow_registry.version_by_alias(CHAMPION)
    if version is None:
        return None, "the base model: there is no champion yet"
    tags, number = version.tags or {}, str(version.version)
    if tags.get(BASE_MODEL_PATH_TAG) != base_model:
        return None, f"the base model: champion version {number} was trained on another base ({tags.get('base_model')})"
    drops = tuple(d for d in tags.get("data.drops", "").split(",") if d)
    # One folder per parent version (and per sweep point), not per run: the folder is part of what names the
    # training setup (the continued adapter, or the weights it starts from), so a killed warm start resumes.
    dst = tools.state.asset_dir(asset_name, f"parent-v{number}")
    dst.mkdir(parents=True, exist_ok=True)
    if adapter_ok and tags.get(ADAPTER_ON_TAG) == "base_model" and tags.get("train.adapter") == training.adapter:
        adapter = tools.mlflow_registry.download(version.run_id, "adapter", str(dst))
        if adapter_matches(adapter, training):
            return Parent(number, version.run_id, drops, adapter, True), f"version {number} (champion): its adapter"
    weights = tools.mlflow_registry.download_model_weights(number, str(dst))
    return Parent(number, version.run_id, drops, weights, False), f"version {number} (champion): its merged weights"


def warm_examples(train: pd.DataFrame, parent: Parent | None, how: str, training: TrainingConfig):
    """The rows the stage trains on and the warm start's record: with a parent, its new drops plus the
    replay share of its old ones (`with_replay`); from the base, every row."""
    if parent is None:
        return train, WarmStart(parent=None, how=how)
    rows, (new, replayed, old) = with_replay(train, parent.drops, training.replay_fraction, training.seed)
    if not new:
        how += "; no drop is new to it, so the whole train split trains again"
    return rows, WarmStart(parent.version, how, new_rows=new, replay_rows=replayed, old_rows=old)


def trained_model(training: TrainingConfig, train: pd.DataFrame, launched: Launched, base_model: str, method: str):
    """The SFT stage's value: the recipe's report, with the loss curve drawn beside the outputs. `train`:
    the examples the job was given, those marked `validation` held back from training."""
    run = launched.report
    png = launched.out_dir / "loss_curve.png"
    png.write_bytes(curve_png(run.loss_curve, "training loss"))
    held = int(train["validation"].sum()) if "validation" in train else 0
    return TrainedModel(
        adapter_dir=run.adapter_dir, merged_dir=run.merged_dir, loss_curve_png=str(png), preset=training.preset,
        settings=training.flat(), device=run.device, max_length=int(train["n_tokens"].max()),
        train_examples=len(train) - held, steps=run.steps, train_loss=run.train_loss, train_seconds=run.seconds,
        loss_curve=run.loss_curve, mlflow_run_id=launched.mlflow_run_id, resumed_from_step=launched.resumed_from_step,
        method=method, adapter=training.adapter, adapter_base_dir=base_model, setup_key=launched.setup_key,
        validation_examples=held, validation_curve=run.validation_curve, best_step=run.best_step,
        best_validation_loss=run.best_validation_loss, stopped_early=run.stopped_early,
    )  # fmt: skip


def training_metadata(trained: TrainedModel, launched: Launched) -> dict:
    """The SFT stage's metadata, figures rounded as the UI shows them."""
    run = launched.report
    metadata = {
        "preset": trained.preset,
        "device": trained.device,
        "train_examples": trained.train_examples,
        "max_length": trained.max_length,
        "steps": trained.steps,
        "train_loss": trained.train_loss,
        "final_loss": run.loss_curve[-1][1] if run.loss_curve else None,
        "train_seconds": round(run.seconds, 1),
        "tokens_per_second": round(float(run.tokens) / run.seconds, 1) if run.tokens else None,
        "world_size": run.world_size,
        "resumed_from_step": launched.resumed_from_step,
        "loss_curve": dg.MetadataValue.md(curve_markdown(run.loss_curve, "loss")),
        "method": trained.method,
        "adapter": trained.adapter,
        "adapter_dir": dg.MetadataValue.path(trained.adapter_dir or "(none: all weights trained)"),
        "merged_dir": dg.MetadataValue.path(trained.merged_dir),
    }
    if trained.validation_examples:
        metadata |= validation_metadata(trained)
    return shown_floats(metadata)


def validation_metadata(trained: TrainedModel) -> dict:
    """The validation slice's figures: how many examples, the checkpoint kept, where training stopped, the curve."""
    return {
        "validation_examples": trained.validation_examples,
        "best_step": trained.best_step,
        "best_validation_loss": trained.best_validation_loss,
        "stopped_early": f"at step {trained.steps}" if trained.stopped_early else "no",
        "validation_curve": dg.MetadataValue.md(curve_markdown(trained.validation_curve, "validation loss")),
    }


@dg.asset(
    group_name="model",
    kinds={"pytorch", "huggingface"},
    pool="training",  # one training or evaluation at a time per machine; later runs queue
    automation_condition=dg.AutomationCondition.eager(),
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    training: TrainingConfig,
    base_model: str,
    instruction_pairs: RecordSet,
    models: ModelLoader,
    state: StateStore,
    checkpoints: CheckpointStore,
    mlflow_registry: MlflowRegistry,
    training_job: TrainingJobClient,
) -> TrainedModel:
    """The SFT stage: an adapter on `base_model` (`training.adapter`; or all weights), trained by the SFT
    recipe on the train split's conversations (the chosen replies when it holds only preference pairs),
    loss on the assistant's tokens; plus the merged model. Under `FT_HOME/artifacts/fine_tuned_model/<run id>/`.
    With no SFT in the method ('dpo', 'grpo'): the base model, untouched, for the next stage to start from."""
    tools = RecipeTools(models, state, checkpoints, mlflow_registry, training_job)
    output = sft_stage(context, training, base_model, instruction_pairs, tools)
    if "skipped" in output.metadata:  # no Pipes job ran: Dagster takes the plain value, its metadata added
        context.add_output_metadata(dict(output.metadata))
        return output.value
    return output


def sft_stage(
    context,
    training: TrainingConfig,
    base_model: str,
    pairs: RecordSet,
    tools: RecipeTools,
    sweep_run: str | None = None,
    asset_name: str = "fine_tuned_model",
) -> dg.Output:
    """Train the SFT stage with `training` and return its value with its metadata: the asset's body,
    and each point of a sweep's (`sweep_run`: the sweep's MLflow parent run, which the point's run is a child of;
    `asset_name`: the folder under FT_HOME/artifacts its outputs go to, one per point)."""
    train, method = sft_examples(pairs, training)
    parent, how = find_parent(training, base_model, tools, trains_sft(method), asset_name)
    if not trains_sft(method):  # the next stage starts from the parent's weights, or the base model's
        starts = parent.weights if parent else base_model
        value = TrainedModel.base(starts, training.preset, training.flat(), tools.models.resolved_device(), method)
        value = replace(value, warm_start=WarmStart(parent.version if parent else None, how))
        skipped = f"method {method}: the next stage starts from {how}, no SFT"
        return dg.Output(value, metadata={"skipped": skipped, **value.warm_start.metadata()})
    train, warm = warm_examples(train, parent, how, training)
    train = with_validation(train, training)  # training.sft.validation_fraction held back (column `validation`)
    # Decided once, here, as it trains (on the rows it trains on): the setup key, the job and MLflow see the same.
    training = with_length_grouping(training, [int(n) for n in train.loc[~train["validation"], "n_tokens"]])
    identity = {"data": pairs.summary.train_data_key, "base": base_model}
    if parent is not None:  # continuing a version is another training than starting from the base
        identity["parent"] = parent.version
    continues = parent is not None and parent.continues_adapter
    starts = parent.weights if parent is not None and not continues else base_model
    options = {"continue_adapter": parent.weights} if continues else {}
    recipe = Recipe("sft", training, train, starts, identity, options=options, parent_run=sweep_run)
    launched = launch_recipe(context, recipe, tools, asset_name)
    trained = replace(trained_model(training, train, launched, starts, method), warm_start=warm)
    # A step that ran a Pipes job hands Dagster typed events: the value wrapped in its Output.
    return dg.Output(trained, metadata={**training_metadata(trained, launched), **warm.metadata()})


# ---- the same asset as a sweep (the preset's `sweep` section): one SFT training per point ---------------------


@dg.op(out=dg.DynamicOut(SweepPoint))
def sweep_points(
    context: dg.OpExecutionContext,
    instruction_pairs: RecordSet,
    training: TrainingConfig,
    sweep: SweepConfig,
    mlflow_registry: MlflowRegistry,
):
    """The sweep's points (`sweep` over `training`), a step each, and the MLflow parent run of their runs."""
    planned = plan(sweep, training)
    if not planned:
        raise ValueError(
            "This run's sweep settings name no parameters: there is no point to train. Name some under "
            "sweep.parameters, or load the code location with a preset without a sweep."
        )
    sft_examples(instruction_pairs, training)  # refuses, before any point trains, a train split with nothing for SFT
    run_id = context.run.run_id
    tags = {
        "dagster.run_id": run_id,
        "sweep.strategy": sweep.strategy,
        "sweep.select": sweep.select,
        "sweep.points": str(len(planned)),
    }
    with mlflow_registry.start_run(f"{mlflow_registry.training_run_name(run_id)}-sweep", tags=tags) as parent:
        parent.log_dict(sweep.model_dump(), "sweep/settings.json")
    context.log.info(
        f"Sweep of {len(planned)} points ({sweep.strategy}), best {sweep.select} wins: "
        + ", ".join(p.key for p in planned)
    )
    for point in planned:
        yield dg.DynamicOutput(
            replace(point, parent_run=parent.run_id),
            mapping_key=point.key,
            metadata={"index": point.index, "settings": dg.MetadataValue.json(point.settings)},
        )


@dg.op(pool="training")  # as the plain asset: one training at a time per machine; the other points queue
def train_point(
    context: dg.OpExecutionContext,
    point: SweepPoint,
    base_model: str,
    instruction_pairs: RecordSet,
    training: TrainingConfig,
    models: ModelLoader,
    state: StateStore,
    checkpoints: CheckpointStore,
    mlflow_registry: MlflowRegistry,
    training_job: TrainingJobClient,
) -> dg.Output[PointResult]:
    """One point: the SFT stage with the point's settings, its MLflow run a child of the sweep's, its outputs
    under FT_HOME/artifacts/fine_tuned_model/<point>/<run id>/; a killed point resumes from its checkpoint."""
    tools = RecipeTools(models, state, checkpoints, mlflow_registry, training_job)
    stage = sft_stage(
        context,
        apply(training, point.settings),
        base_model,
        instruction_pairs,
        tools,
        sweep_run=point.parent_run,
        asset_name=f"fine_tuned_model/{point.key}",
    )
    result = PointResult(point, stage.value, point_metrics(stage.value))
    label_child_run(mlflow_registry, result, context.run.run_id)
    figures = shown_floats({f"point_{m}": v for m, v in result.metrics.items()})
    settings = {"point": point.key, "settings": dg.MetadataValue.json(point.settings)}
    return dg.Output(result, metadata={**settings, **figures, **stage.metadata})


def label_child_run(registry: MlflowRegistry, result: PointResult, dagster_run_id: str) -> None:
    """The point's MLflow run named after the point, under the sweep's parent run (also a run resumed from
    an earlier sweep's killed attempt), with the point's settings and figures (`sweep.*`)."""
    point = result.point
    name = f"{registry.training_run_name(dagster_run_id)}-{point.key}"
    tags = {"mlflow.parentRunId": point.parent_run, "mlflow.runName": name, "sweep.point": point.key}
    with registry.start_run(name, tags=tags, run_id=result.trained.mlflow_run_id) as run:
        run.log_params({f"sweep.{path}": str(value) for path, value in point.settings.items()})
        run.log_metrics({f"sweep.{metric}": value for metric, value in result.metrics.items()})


@dg.op
def best_point(
    context: dg.OpExecutionContext, results: list[PointResult], sweep: SweepConfig, mlflow_registry: MlflowRegistry
) -> dg.Output[TrainedModel]:
    """The point with the best `sweep.select`: its model is fine_tuned_model's value. Every point's settings
    and figures and a chart comparing them go to the sweep's MLflow parent run."""
    chosen = best(results, sweep.select, sweep.maximize)
    log_sweep(mlflow_registry, results, chosen, sweep)
    context.log.info(f"Chosen: point {chosen.point.key}, {sweep.select} {chosen.metrics[sweep.select]:.4f}")
    # The point's settings go on with its model: the second stage trains with them too (its shared settings).
    chosen_model = replace(chosen.trained, sweep_point=dict(chosen.point.settings))
    return dg.Output(chosen_model, metadata=sweep_metadata(results, chosen, sweep, mlflow_registry))


def log_sweep(registry: MlflowRegistry, results: list[PointResult], chosen: PointResult, sweep: SweepConfig) -> None:
    """On the sweep's parent run: the points' table (sweep/points.json) and description, the comparison chart
    (sweep/comparison.png), the best figure, and tags naming the chosen point and its run."""
    import matplotlib.pyplot as plt

    tags = {"sweep.best_point": chosen.point.key, "sweep.best_run_id": chosen.trained.mlflow_run_id or ""}
    with registry.start_run("", tags=tags, run_id=chosen.point.parent_run) as run:
        run.log_table(points_frame(results, chosen), "sweep/points.json")
        figure = comparison_chart(results, chosen, sweep.select)
        run.log_figure(figure, "sweep/comparison.png")
        plt.close(figure)
        run.log_metrics({f"best.{sweep.select}": chosen.metrics[sweep.select]})
        run.describe(
            f"Sweep of {len(results)} points, chosen by {sweep.select}:\n\n"
            + points_markdown(results, chosen, sweep.select)
        )


def sweep_metadata(results: list[PointResult], chosen: PointResult, sweep: SweepConfig, registry: MlflowRegistry):
    """fine_tuned_model's metadata from a sweep: every point (the chosen one marked), the chosen point's
    settings and figures, and the sweep's MLflow run."""
    trained = chosen.trained
    return shown_floats(
        {
            "sweep_points": dg.MetadataValue.md(points_markdown(results, chosen, sweep.select)),
            "chosen_point": chosen.point.key,
            "chosen_settings": dg.MetadataValue.json(chosen.point.settings),
            "selected_by": f"{'highest' if sweep.maximize else 'lowest'} {sweep.select}",
            sweep.select: chosen.metrics[sweep.select],
            "steps": trained.steps,
            "train_loss": trained.train_loss,
            "method": trained.method,
            "merged_dir": dg.MetadataValue.path(trained.merged_dir),
            "sweep_mlflow_run": dg.MetadataValue.url(registry.run_url(chosen.point.parent_run)),
        }
    )


@dg.graph_asset(
    name="fine_tuned_model",
    group_name="model",
    kinds={"pytorch", "huggingface"},
    automation_condition=dg.AutomationCondition.eager(),
)
def swept_fine_tuned_model(base_model, instruction_pairs):
    """The SFT stage as a sweep (the preset's `sweep` section): the SFT recipe trained once per point of the
    training settings, each point a step of its own (`train_point[<point>]`, queued in the `training` pool) and
    an MLflow child run of the sweep's run; the point with the best `sweep.select` (the validation loss by
    default) is the value, which the next stages train on, evaluate and register. Each point's outputs are
    under `FT_HOME/artifacts/fine_tuned_model/<point>/<run id>/`."""
    points = sweep_points(instruction_pairs)
    return best_point(points.map(lambda point: train_point(point, base_model, instruction_pairs)).collect())
