"""fine_tuned_model: the SFT stage, an adapter (or all weights) trained on the train split by the SFT
recipe (`assets/recipes/sft.py`, TRL's SFTTrainer) in a job of its own."""

import dagster as dg
import pandas as pd

from assets.domain.figures import shown_floats
from assets.domain.preferences import chosen_conversations
from assets.domain.training import TrainingConfig, resolve_method, trains_sft
from assets.domain.values import TrainedModel
from assets.recipes.launch import Launched, Recipe, RecipeTools, curve_markdown, curve_png, launch_recipe
from assets.recipes.sft import with_length_grouping
from resources.checkpoints import CheckpointStore
from resources.mlflow_registry import MlflowRegistry
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
    return train, method


def trained_model(training: TrainingConfig, train: pd.DataFrame, launched: Launched, base_model: str, method: str):
    """The SFT stage's value: the recipe's report, with the loss curve drawn beside the outputs."""
    run = launched.report
    png = launched.out_dir / "loss_curve.png"
    png.write_bytes(curve_png(run.loss_curve, "training loss"))
    return TrainedModel(
        adapter_dir=run.adapter_dir, merged_dir=run.merged_dir, loss_curve_png=str(png), preset=training.preset,
        settings=training.flat(), device=run.device, max_length=int(train["n_tokens"].max()),
        train_examples=len(train), steps=run.steps, train_loss=run.train_loss, train_seconds=run.seconds,
        loss_curve=run.loss_curve, mlflow_run_id=launched.mlflow_run_id, resumed_from_step=launched.resumed_from_step,
        method=method, adapter=training.adapter, adapter_base_dir=base_model, setup_key=launched.setup_key,
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
    return shown_floats(metadata)


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
    train, method = sft_examples(instruction_pairs, training)
    if not trains_sft(method):
        context.add_output_metadata({"skipped": f"method {method}: the next stage starts from the base model, no SFT"})
        return TrainedModel.base(base_model, training.preset, training.flat(), models.resolved_device(), method)
    # Decided once, here, as it trains: the setup key, the job and MLflow see the same settings.
    training = with_length_grouping(training, [int(n) for n in train["n_tokens"]])
    identity = {"data": instruction_pairs.summary.train_set_hash, "base": base_model}
    tools = RecipeTools(models, state, checkpoints, mlflow_registry, training_job)
    launched = launch_recipe(context, Recipe("sft", training, train, base_model, identity), tools, "fine_tuned_model")
    trained = trained_model(training, train, launched, base_model, method)
    # A step that ran a Pipes job hands Dagster typed events: the value wrapped in its Output.
    return dg.Output(trained, metadata=training_metadata(trained, launched))
