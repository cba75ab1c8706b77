"""preference_tuned_model: the candidate model. The method's second stage on top of the SFT stage: DPO on
the preference pairs (`assets/recipes/dpo.py`) or GRPO with rewards on the prompts (`assets/recipes/grpo.py`),
each in a job of its own; or the SFT stage's model handed on unchanged when the method has neither."""

from dataclasses import replace

import dagster as dg

from assets.domain.evaluation import EvaluationConfig
from assets.domain.figures import shown_floats
from assets.domain.metrics import task_type
from assets.domain.mixture import mixed
from assets.domain.preferences import chosen_conversations
from assets.domain.sweep import apply
from assets.domain.tool_calls import reply_text
from assets.domain.training import TrainingConfig, resolve_method, second_stage, trains_sft
from assets.domain.values import PreferenceStage, RewardStage, TrainedModel
from assets.recipes.grpo import rewards
from assets.recipes.launch import Launched, Recipe, RecipeTools, curve_markdown, launch_recipe
from resources.checkpoints import CheckpointStore
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet
from resources.state import StateStore
from resources.training_job import TrainingJobClient


def trained_with(training: TrainingConfig, sft: TrainedModel) -> TrainingConfig:
    """The settings the second stage trains with: the preset's, with the point's settings when a sweep chose
    the SFT model (so a swept shared setting, such as lora_r or seed, holds for both stages)."""
    point = getattr(sft, "sweep_point", None)  # absent from values stored before sweeps
    return apply(training, point) if point else training


def starting_point(method: str, sft: TrainedModel, base_model: str, training: TrainingConfig) -> TrainedModel:
    """The model the second stage starts from (and, for DPO, is held to as its reference): the SFT
    stage's for 'sft+dpo' and 'sft+grpo', the base model (a parent version's on a warm start) for 'dpo'
    and 'grpo'. When this asset is
    materialized alone after the method changed, its input may be an earlier run's SFT model, whose
    figures do not describe this candidate: a method without SFT never carries them."""
    if not trains_sft(method):
        if sft.method == method and not sft.steps:  # the SFT stage named the weights: the base's, or a parent's
            return sft
        return TrainedModel.base(base_model, training.preset, training.flat(), sft.device, method)
    if not trains_sft(sft.method):
        raise ValueError(
            f"training.method is {method!r} but fine_tuned_model was last materialized with method "
            f"{sft.method!r} (no SFT model to start from): materialize fine_tuned_model again first."
        )
    return sft


def dpo_recipe(training: TrainingConfig, pairs: RecordSet, start: TrainedModel, identity: dict) -> Recipe:
    """DPO on the train split's preference pairs, each as often as its mixing weight says (`split.mixing`)."""
    train = pairs.frame(where=[("split", "=", "train"), ("kind", "=", "preference")])
    train = mixed(train, pairs.summary.mixing, training.seed)
    return Recipe("dpo", training, train, start.merged_dir, identity, continues_run=start.mlflow_run_id)


def grpo_recipe(training: TrainingConfig, pairs: RecordSet, start: TrainedModel, identity: dict, pattern: str):
    """GRPO on the train split's prompts (the chosen replies' prompts when it holds only preference pairs),
    rewarded as evaluation scores their answers: the task read from the answers, and evaluation's answer pattern.
    Each prompt as often as its mixing weight says (`split.mixing`)."""
    train = pairs.frame(where=[("split", "=", "train"), ("kind", "=", "sft")])
    if train.empty:
        train = chosen_conversations(pairs.frame(where=[("split", "=", "train"), ("kind", "=", "preference")]))
    train = mixed(train, pairs.summary.mixing, training.seed)
    answers = [reply_text(m[-1]) for m in train["messages"]]
    task = task_type(answers, tool_calls=any(m[-1].get("tool_calls") for m in train["messages"]))
    options = {"task": task, "answer_pattern": pattern}
    # A reward that cannot be built is refused here, before a job starts; the names go on the stage's record.
    options["rewards"] = [f.__name__ for f in rewards(training, options)]
    return Recipe("grpo", training, train, start.merged_dir, identity, options, start.mlflow_run_id)


def stage_figures(recipe: Recipe, launched: Launched) -> PreferenceStage | RewardStage:
    """What the second stage did, as the candidate records it."""
    run, training = launched.report, recipe.training
    if recipe.method == "dpo":
        return PreferenceStage(
            pairs=len(recipe.examples), steps=run.steps, beta=training.dpo.beta,
            learning_rate=training.dpo.learning_rate, train_loss=run.train_loss, train_seconds=run.seconds,
            reward_accuracy=run.last.get("reward_accuracy"), loss_curve=run.loss_curve,
        )  # fmt: skip
    return RewardStage(
        prompts=len(recipe.examples), steps=run.steps, num_generations=training.grpo.num_generations,
        beta=training.grpo.beta, learning_rate=training.grpo.learning_rate,
        rewards=tuple(recipe.options["rewards"]), train_seconds=run.seconds,
        reward_curve=run.curves.get("reward", ()), kl=run.last.get("kl"),
    )  # fmt: skip


def no_signal(launched: Launched) -> str | None:
    """Why a GRPO stage learnt nothing, when every answer to every prompt scored the same (reward std 0 at
    every step: no answer beat its group, so there was no gradient). Else None."""
    spreads = launched.report.curves.get("reward_std", ())
    if not spreads or any(std > 0 for _, std in spreads):
        return None
    return (
        f"GRPO had nothing to learn from: at every one of its {len(spreads)} steps all answers to a prompt scored "
        f"the same (mean reward {launched.report.last.get('reward', 0.0):.3f}), so the model is unchanged. A base "
        "model that never answers in the expected form scores 0 everywhere: train with method sft+grpo, or add a "
        "reward that gives partial credit (field_accuracy, rougeL, or training.grpo.reward_function)."
    )


def stage_metadata(candidate: TrainedModel, launched: Launched) -> dict:
    stage, run = candidate.preference or candidate.reinforcement, launched.report
    metadata = {"steps": run.steps, "seconds": round(run.seconds, 1), "world_size": run.world_size,
                "resumed_from_step": launched.resumed_from_step}  # fmt: skip
    if isinstance(stage, PreferenceStage):
        metadata |= {"dpo_pairs": stage.pairs, "dpo_beta": stage.beta, "dpo_loss": stage.train_loss,
                     "dpo_reward_accuracy": stage.reward_accuracy,
                     "loss_curve": dg.MetadataValue.md(curve_markdown(run.loss_curve, "loss"))}  # fmt: skip
    else:
        metadata |= {"grpo_prompts": stage.prompts, "grpo_rewards": ", ".join(stage.rewards), "grpo_kl": stage.kl,
                     "grpo_first_reward": stage.first_reward, "grpo_last_reward": stage.last_reward,
                     "reward_curve": dg.MetadataValue.md(curve_markdown(stage.reward_curve, "reward"))}  # fmt: skip
    return shown_floats(metadata) | {"adapter_applies_to": dg.MetadataValue.path(candidate.adapter_base_dir)}


@dg.asset(
    group_name="model",
    kinds={"pytorch", "huggingface"},
    pool="training",  # one training or evaluation at a time per machine; later runs queue
    automation_condition=dg.AutomationCondition.eager(),
)
def preference_tuned_model(
    context: dg.AssetExecutionContext,
    training: TrainingConfig,
    evaluation: EvaluationConfig,
    base_model: str,
    fine_tuned_model: TrainedModel,
    instruction_pairs: RecordSet,
    models: ModelLoader,
    state: StateStore,
    checkpoints: CheckpointStore,
    mlflow_registry: MlflowRegistry,
    training_job: TrainingJobClient,
) -> TrainedModel:
    """The candidate model that evaluation scores and registration registers. With DPO in the method
    ('sft+dpo', 'dpo'; 'auto' when the train split holds preference pairs): the DPO recipe on those pairs;
    with GRPO ('sft+grpo', 'grpo'): the GRPO recipe on the train prompts, rewarded as evaluation scores.
    Either starts from the SFT stage's merged model or from the base, with a new adapter of
    `training.adapter` (or all weights); the value records the folder its adapter applies to and the
    stage's figures. Otherwise the SFT model, unchanged. Under `FT_HOME/artifacts/preference_tuned_model/<run id>/`.
    """
    preference_pairs = instruction_pairs.frame(where=[("split", "=", "train"), ("kind", "=", "preference")])
    method = resolve_method(training.method, len(preference_pairs))
    stage = second_stage(method)
    if stage is None:
        context.add_output_metadata({"method": method, "second_stage": "none: the SFT model, unchanged"})
        return replace(fine_tuned_model, method=method)
    training = trained_with(training, fine_tuned_model)
    start = starting_point(method, fine_tuned_model, base_model, training)
    # Its checkpoints resume only on the same data and the same starting weights (the SFT setup, or the base).
    identity = {"data": instruction_pairs.summary.train_data_key, "starts_from": start.setup_key or start.merged_dir}
    recipe = (
        dpo_recipe(training, instruction_pairs, start, identity)
        if stage == "dpo"
        else grpo_recipe(training, instruction_pairs, start, identity, evaluation.answer_pattern)
    )
    tools = RecipeTools(models, state, checkpoints, mlflow_registry, training_job)
    launched = launch_recipe(context, recipe, tools, "preference_tuned_model")
    figures = stage_figures(recipe, launched)
    if (note := no_signal(launched)) is not None:
        context.log.warning(note)
    candidate = replace(
        start, adapter_dir=launched.report.adapter_dir, merged_dir=launched.report.merged_dir,
        mlflow_run_id=launched.mlflow_run_id, method=method, adapter=training.adapter,
        adapter_base_dir=start.merged_dir, **{"preference" if stage == "dpo" else "reinforcement": figures},
    )  # fmt: skip
    metadata = {"method": method, "second_stage": stage, **stage_metadata(candidate, launched)}
    metadata |= {"note": note} if note else {}
    # A step that ran a Pipes job hands Dagster typed events: the value wrapped in its Output.
    return dg.Output(candidate, metadata=metadata | {"merged_dir": dg.MetadataValue.path(candidate.merged_dir)})
