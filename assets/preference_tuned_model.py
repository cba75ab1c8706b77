"""preference_tuned_model: the candidate model, DPO on the preference pairs on top of the SFT stage
(or the SFT stage's model handed on unchanged when the method has no DPO)."""

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.domain.pod_resources import GPU_POD
from assets.domain.preferences import dpo_rows
from assets.domain.training import TrainingConfig, resolve_method, trainer_configs, trains_dpo, trains_sft
from assets.domain.values import PreferenceStage, TrainedModel, short_run_id
from resources.batch_order import dpo_trainer_class
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet
from resources.state import StateStore
from resources.training_tracking import DPO_TRACKED, live_tracking


@dataclass
class PreferenceRun:
    """What one DPOTrainer.train() left behind, before its outputs are saved."""

    trainer: Any
    tokenizer: Any
    stage: PreferenceStage


def starting_point(method: str, sft: TrainedModel, base_model: str) -> str:
    """The weights DPO starts from and is held to (its reference): the SFT stage's merged model for
    'sft+dpo', the base model for 'dpo'."""
    if trains_sft(method) and not trains_sft(sft.method):
        raise ValueError(
            f"training.method is {method!r} but fine_tuned_model was last materialized with method "
            f"{sft.method!r} (no SFT model to start from): materialize fine_tuned_model again first."
        )
    return sft.merged_dir if trains_sft(method) else base_model


def train_preferences(
    training: TrainingConfig, starts_from: str, pairs: pd.DataFrame, models: ModelLoader, out_dir: Path, callback
) -> PreferenceRun:
    """DPO with TRL's DPOTrainer on `pairs`, from the weights in `starts_from`. With an adapter the
    reference model is those weights with the adapter switched off; with 'full', TRL loads a frozen
    copy of them. `callback` (`live_tracking`) reports each logged step as it comes."""
    from datasets import Dataset

    # Refuses settings this device cannot run (qlora on a CPU) before any model loads.
    # Tokens the base model was given are trained here when DPO starts from the base (method dpo).
    setup = trainer_configs(
        training, out_dir / "trainer", 0, models.resolved_device() == "cpu", models.new_tokens(starts_from)
    )
    tokenizer = models.load_tokenizer(starts_from)
    trainer = dpo_trainer_class()(  # DPOTrainer; batches bounded by max_batch_tokens where it binds
        model=models.load_model(starts_from, **setup.model_kwargs),
        args=setup.dpo,
        max_batch_tokens=setup.max_batch_tokens,
        train_dataset=Dataset.from_list(dpo_rows(pairs, tokenizer)),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=[callback] if callback is not None else None,
    )
    started = time.time()
    result = trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    stage = PreferenceStage(
        pairs=len(pairs),
        steps=trainer.state.global_step,
        beta=training.dpo_beta,
        learning_rate=training.dpo_learning_rate,
        train_loss=float(result.training_loss),
        train_seconds=time.time() - started,
        reward_accuracy=history[-1].get("rewards/accuracies") if history else None,
        loss_curve=tuple((h["step"], float(h["loss"])) for h in history),
    )
    return PreferenceRun(trainer, tokenizer, stage)


@contextmanager
def tracked_preferences(registry: MlflowRegistry, sft: TrainedModel, dagster_run_id: str):
    """The MLflow run the DPO stage reports to as it trains: the SFT stage's run when there was one
    (one run holds both curves, `train.*` and `dpo.*`, and registration completes it), else a new run."""
    run_id = sft.mlflow_run_id if sft.mlflow_run_id and registry.run_exists(sft.mlflow_run_id) else None
    run_name = f"{registry.model_name}-{short_run_id(dagster_run_id)}"
    with registry.start_run(run_name=run_name, tags={"dagster.run_id": dagster_run_id}, run_id=run_id) as run:
        yield run


def without_sft(sft: TrainedModel, base_model: str) -> TrainedModel:
    """The SFT stage's value as a 'dpo' run sees it: no SFT figures. When this asset is materialized
    alone after the method changed to 'dpo', its input is still an earlier run's SFT model, whose
    steps, loss and MLflow run do not describe this candidate."""
    if not trains_sft(sft.method):
        return sft
    return replace(
        sft, adapter_dir=None, merged_dir=base_model, loss_curve_png="", max_length=0, train_examples=0, steps=0,
        train_loss=0.0, train_seconds=0.0, loss_curve=(), mlflow_run_id=None, resumed_from_step=None, method="dpo",
    )  # fmt: skip


def preference_metadata(candidate: TrainedModel, note: str) -> dict:
    stage = candidate.preference
    metadata = {"method": candidate.method, "adapter": candidate.adapter, "dpo": note}
    if stage is not None:
        metadata |= {
            "dpo_pairs": stage.pairs,
            "dpo_steps": stage.steps,
            "dpo_beta": stage.beta,
            "dpo_loss": stage.train_loss,
            "dpo_final_loss": stage.loss_curve[-1][1] if stage.loss_curve else None,
            "dpo_reward_accuracy": stage.reward_accuracy,
            "dpo_seconds": round(stage.train_seconds, 1),
            "adapter_applies_to": dg.MetadataValue.path(candidate.adapter_base_dir),
        }
    return metadata | {"merged_dir": dg.MetadataValue.path(candidate.merged_dir)}


@dg.asset(
    group_name="model",
    kinds={"pytorch", "huggingface"},
    pool="training",  # one training or evaluation at a time per machine; later runs queue
    automation_condition=dg.AutomationCondition.eager(),
    op_tags=GPU_POD,  # its pod on Kubernetes (FT_EXECUTOR=k8s): a GPU node
)
def preference_tuned_model(
    context: dg.AssetExecutionContext,
    training: TrainingConfig,
    base_model: str,
    fine_tuned_model: TrainedModel,
    instruction_pairs: RecordSet,
    models: ModelLoader,
    state: StateStore,
    mlflow_registry: MlflowRegistry,
) -> TrainedModel:
    """The candidate model that evaluation scores and registration registers. With DPO in the method
    ('sft+dpo', 'dpo'; 'auto' when the train split holds preference pairs): TRL's DPOTrainer on those
    pairs, from the SFT stage's merged model ('sft+dpo', which is also DPO's reference) or from the
    base ('dpo'), with a new adapter of `training.adapter` (or all weights); the value records the
    folder its adapter applies to and the DPO stage's figures. Otherwise the SFT model, unchanged.
    Folders under `FT_HOME/artifacts/preference_tuned_model/<run id>/`.
    """
    pairs = instruction_pairs.frame(where=[("split", "=", "train"), ("kind", "=", "preference")])
    method = resolve_method(training.method, len(pairs))
    if not trains_dpo(method):
        candidate = replace(fine_tuned_model, method=method)
        context.add_output_metadata(preference_metadata(candidate, f"none (method {method}): the SFT model, unchanged"))
        return candidate
    starts_from = starting_point(method, fine_tuned_model, base_model)
    sft = fine_tuned_model if trains_sft(method) else without_sft(fine_tuned_model, base_model)
    out_dir = state.asset_dir("preference_tuned_model", context.run.run_id)
    with tracked_preferences(mlflow_registry, sft, context.run.run_id) as mlflow_run:
        callback = live_tracking(mlflow_run, context.log.info, training.dpo_max_steps, "dpo", DPO_TRACKED)
        run = train_preferences(training, starts_from, pairs, models, out_dir, callback)
    adapter_dir = out_dir / "adapter" if hasattr(run.trainer.model, "peft_config") else None
    merged_dir = out_dir / "merged"
    models.save_trained(run.trainer.model, run.tokenizer, adapter_dir, merged_dir, state.atomic_dir, starts_from)
    candidate = replace(
        sft,
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        mlflow_run_id=mlflow_run.run_id,
        merged_dir=str(merged_dir),
        method=method,
        adapter=training.adapter,
        adapter_base_dir=starts_from,
        preference=run.stage,
    )
    context.add_output_metadata(preference_metadata(candidate, f"trained on {len(pairs)} pairs from {starts_from}"))
    return candidate
