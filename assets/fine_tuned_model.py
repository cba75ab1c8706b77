"""fine_tuned_model: the SFT stage, an adapter (or all weights) trained with TRL's SFTTrainer on the train split."""

import base64
import hashlib
import io
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.pod_resources import GPU_POD
from assets.domain.preferences import chosen_conversations
from assets.domain.training import (
    TrainingConfig,
    resolve_method,
    trainer_configs,
    trains_sft,
)
from assets.domain.values import TrainedModel, short_run_id
from resources.batch_order import sft_trainer_class, with_length_grouping
from resources.checkpoints import CheckpointStore
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet
from resources.state import StateStore
from resources.training_job import TrainingJobClient

# The file in a setup's checkpoint folder naming the MLflow run its training reports to.
MLFLOW_RUN_FILE = "mlflow_run_id"
# The training job (`python -m`, or torchrun with training.num_processes processes) and the files it
# shares with this asset in the setup's checkpoint folder: its training examples, and its error if it fails.
TRAINING_JOB = "assets.training_jobs.sft"
JOB_EXAMPLES_FILE = "train_examples.jsonl"
JOB_ERROR_FILE = "job_error.txt"


def loss_curve_png(steps: list[int], losses: list[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class TrainingRun:
    """What one trainer.train() left behind, before its outputs are saved."""

    trainer: Any
    tokenizer: Any
    train_loss: float
    seconds: float
    loss_curve: list[tuple[int, float]]
    tokens: int


def training_dataset(tokenizer, train: pd.DataFrame):
    """The train split as TRL trains on it: each conversation's `input_ids` and `assistant_masks`,
    rendered with tools and turn weights the way validation measured it (`training_tokens`), by a
    training template with {% generation %} markers (loss on the assistant's tokens only)."""
    from datasets import Dataset

    template = training_chat_template(tokenizer) or tokenizer.chat_template
    tools = train["tools"] if "tools" in train else [None] * len(train)
    return Dataset.from_list([training_tokens(tokenizer, m, t, template) for m, t in zip(train["messages"], tools)])


@dataclass(frozen=True)
class Checkpoints:
    """Where one training setup checkpoints, what it resumes from, and its live-tracking callback."""

    folder: Path
    resume: Path | None
    resumed_from_step: int | None
    callback: Any


def train_adapter(
    training: TrainingConfig, base_model: str, train: pd.DataFrame, models: ModelLoader, checkpoints: Checkpoints
) -> TrainingRun:
    """Train `training.adapter` (or all weights) on `train`'s conversations with TRL's SFTTrainer, loss on the
    assistant's tokens only, checkpointing into `checkpoints.folder` and resuming from
    `checkpoints.resume` when a killed training left one."""
    # Validation cut or left out every example longer than its max_tokens, so nothing is truncated here.
    max_length = int(train["n_tokens"].max())
    # Batches of similar length only where random ones would hold much padding (resources/batch_order.py). The
    # stage has decided it already (the same answer again); callers of this function alone have not.
    training = with_length_grouping(training, [int(n) for n in train["n_tokens"]])
    # Refuses settings this device cannot run (qlora on a CPU) before any model loads.
    use_cpu, new_tokens = models.resolved_device() == "cpu", models.new_tokens(base_model)
    setup = trainer_configs(training, checkpoints.folder, max_length, use_cpu, new_tokens)
    tokenizer = models.load_tokenizer(base_model)  # saved with the model: serving renders as the base did
    # SFTTrainer; batches bounded by max_batch_tokens where it binds, of similar length in random order when grouping
    trainer = sft_trainer_class()(
        model=models.load_model(base_model, **setup.model_kwargs),
        args=setup.sft,
        max_batch_tokens=setup.max_batch_tokens,
        train_dataset=training_dataset(tokenizer, train),
        processing_class=tokenizer,
        peft_config=setup.peft,
        callbacks=[checkpoints.callback] if checkpoints.callback is not None else None,
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(checkpoints.resume) if checkpoints.resume else None)
    seconds = time.time() - started
    history = [h for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen or (history[-1].get("num_tokens", 0) if history else 0)
    curve = [(h["step"], float(h["loss"])) for h in history]
    return TrainingRun(trainer, tokenizer, float(result.training_loss), seconds, curve, int(tokens))


# Settings that change how a training reports or checkpoints, not what it learns: not in its key.
NOT_IN_SETUP_KEY = ("preset", "logging_steps", "save_steps", "keep_checkpoints")
SETUP_KEY_CHARS = 16
# The preference stage's settings: they do not change what SFT learns, so not in an SFT setup's key.
DPO_SETTINGS = "dpo_"


def setup_key(training: TrainingConfig, train_set_hash: str, base_model: str, stage: str = "sft") -> str:
    """Names a training setup: the stage, every setting that changes the result, the training
    data's content hash and the base model. Same key, same training: its checkpoints may be resumed."""
    settings = {
        k: v
        for k, v in training.model_dump().items()
        if k not in NOT_IN_SETUP_KEY and not (stage == "sft" and k.startswith(DPO_SETTINGS))
    }
    payload = json.dumps(
        {"stage": stage, "settings": settings, "data": train_set_hash, "base": base_model}, sort_keys=True
    )
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:SETUP_KEY_CHARS]}"


@contextmanager
def tracked_training(registry: MlflowRegistry, folder: Path, dagster_run_id: str, resumed_from: int | None):
    """The MLflow run a training reports to while it trains: a new one, or the run of the killed
    attempt this training resumes (its id is kept in the checkpoint folder), so one run holds the
    whole curve. Registration later adds the evaluation to this same run."""
    marker = folder / MLFLOW_RUN_FILE
    run_id = marker.read_text().strip() if marker.is_file() else None
    if run_id and not registry.run_exists(run_id):
        run_id = None
    tags = {"dagster.run_id": dagster_run_id}
    if resumed_from is not None:
        tags["train.resumed_from_step"] = str(resumed_from)
    run_name = f"{registry.model_name}-{short_run_id(dagster_run_id)}"
    with registry.start_run(run_name=run_name, tags=tags, run_id=run_id) as run:
        marker.write_text(run.run_id)
        yield run


def save_models(
    run: TrainingRun, out_dir: Path, state: StateStore, models: ModelLoader, base_model: str
) -> tuple[Path | None, Path]:
    """The adapter (none for adapter 'full'), and a plain model for serving (the adapter merged into
    the base weights, or the fully trained weights), each written atomically; returns both folders."""
    model = run.trainer.model
    adapter_dir = out_dir / "adapter" if hasattr(model, "peft_config") else None
    merged_dir = out_dir / "merged"
    models.save_trained(model, run.tokenizer, adapter_dir, merged_dir, state.atomic_dir, starts_from=base_model)
    return adapter_dir, merged_dir


@dataclass(frozen=True)
class SftJob:
    """What the training job (`assets/training_jobs/sft.py`) is told, as Pipes extras: the settings,
    where its examples, checkpoints and outputs are, and the MLflow run it reports to."""

    training: dict[str, Any]
    base_model: str
    checkpoint_dir: str
    resume: str | None
    resumed_from_step: int | None
    out_dir: str
    state_home: str
    models: dict[str, Any]
    mlflow: dict[str, Any]
    mlflow_run_id: str

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> "SftJob":
        return cls(**{f.name: extras[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class SftReport:
    """What the training job reports when it has trained and saved (a Pipes custom message)."""

    steps: int
    train_loss: float
    seconds: float
    loss_curve: tuple[tuple[int, float], ...]
    tokens: int
    world_size: int
    device: str
    adapter_dir: str | None
    merged_dir: str

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "SftReport":
        curve = tuple((int(step), float(loss)) for step, loss in message["loss_curve"])
        return cls(**{**message, "loss_curve": curve})


def write_examples(train: pd.DataFrame, folder: Path) -> None:
    """The job's training examples, one JSON object a line (conversations and tool schemas keep their shape)."""
    with (folder / JOB_EXAMPLES_FILE).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in train.to_dict("records"))


def read_examples(folder: Path) -> pd.DataFrame:
    with (folder / JOB_EXAMPLES_FILE).open(encoding="utf-8") as lines:
        return pd.DataFrame([json.loads(line) for line in lines])


def run_training_job(context, client: TrainingJobClient, job: SftJob, num_processes: int) -> SftReport:
    """Run the training job through Dagster Pipes and return its report. A failed job fails this step
    with the job's own error (which it leaves in the checkpoint folder), not only its exit code."""
    error_file = Path(job.checkpoint_dir) / JOB_ERROR_FILE
    error_file.unlink(missing_ok=True)
    try:
        invocation = client.launch(context, TRAINING_JOB, num_processes, asdict(job))
    except Exception as failed:
        if error_file.is_file():
            raise RuntimeError(f"The training job failed: {error_file.read_text().strip()}") from failed
        raise
    reports = invocation.get_custom_messages()
    if not reports:
        raise RuntimeError(f"The training job ({TRAINING_JOB}) ended without reporting what it trained.")
    return SftReport.from_message(reports[-1])


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


def sft_skipped(context, training: TrainingConfig, base_model: str, models: ModelLoader) -> TrainedModel:
    """The SFT stage's value when the method is 'dpo': no SFT; the base model is what DPO starts from."""
    context.add_output_metadata({"skipped": "method dpo: preference training starts from the base model, no SFT"})
    return TrainedModel(
        adapter_dir=None,
        merged_dir=base_model,
        loss_curve_png="",
        preset=training.preset,
        settings={k: v for k, v in training.model_dump().items() if k != "preset"},
        device=models.resolved_device(),
        max_length=0,
        train_examples=0,
        steps=0,
        train_loss=0.0,
        train_seconds=0.0,
        method="dpo",
        adapter=training.adapter,
        adapter_base_dir=base_model,
    )


def training_metadata(trained: TrainedModel, run: SftReport, png: bytes) -> dict:
    steps, losses = [s for s, _ in run.loss_curve], [loss for _, loss in run.loss_curve]
    return {
        "preset": trained.preset,
        "device": trained.device,
        "train_examples": trained.train_examples,
        "max_length": trained.max_length,
        "steps": trained.steps,
        "train_loss": trained.train_loss,
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(run.seconds, 1),
        "tokens_per_second": round(float(run.tokens) / run.seconds, 1) if run.tokens else None,
        "world_size": run.world_size,
        "loss_curve": dg.MetadataValue.md(
            f"![loss curve](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
            + pd.DataFrame({"step": steps, "loss": losses}).to_markdown(index=False)
        ),
        "method": trained.method,
        "adapter": trained.adapter,
        "adapter_dir": dg.MetadataValue.path(trained.adapter_dir or "(none: all weights trained)"),
        "merged_dir": dg.MetadataValue.path(trained.merged_dir),
    }


def sft_stage(
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
    """The SFT stage: an adapter on `base_model` (`training.adapter`; or all weights), trained by TRL's
    SFTTrainer on the train split's conversations (the chosen replies when it holds only preference
    pairs), loss on the assistant's tokens; plus the merged model. Under `FT_HOME/artifacts/fine_tuned_model/<run id>/`.
    The training runs as its own job (`training.num_processes` processes under torchrun) through Dagster Pipes."""
    train, method = sft_examples(instruction_pairs, training)
    if not trains_sft(method):
        return sft_skipped(context, training, base_model, models)
    training = with_length_grouping(training, [int(n) for n in train["n_tokens"]])  # key, job, MLflow: as trained
    key = setup_key(training, instruction_pairs.summary.train_set_hash, base_model)
    resume, step = checkpoints.last(key)
    if resume is not None:
        context.log.info(f"Resuming training from its checkpoint at step {step} ({resume})")
    folder, out_dir = checkpoints.folder(key), state.asset_dir("fine_tuned_model", context.run.run_id)
    write_examples(train, folder)
    with tracked_training(mlflow_registry, folder, context.run.run_id, step) as mlflow_run:
        job = SftJob(training.model_dump(), base_model, str(folder), resume and str(resume), step, str(out_dir),
                     state.home, models.model_dump(), mlflow_registry.model_dump(), mlflow_run.run_id)  # fmt: skip
        run = run_training_job(context, training_job, job, training.num_processes)
    checkpoints.finish(key)
    png = loss_curve_png([s for s, _ in run.loss_curve], [loss for _, loss in run.loss_curve])
    (out_dir / "loss_curve.png").write_bytes(png)
    trained = TrainedModel(
        adapter_dir=run.adapter_dir,
        merged_dir=run.merged_dir,
        loss_curve_png=str(out_dir / "loss_curve.png"),
        preset=training.preset,
        settings={k: v for k, v in training.model_dump().items() if k != "preset"},
        device=run.device,
        max_length=int(train["n_tokens"].max()),
        train_examples=len(train),
        steps=run.steps,
        train_loss=run.train_loss,
        train_seconds=run.seconds,
        loss_curve=run.loss_curve,
        mlflow_run_id=mlflow_run.run_id, resumed_from_step=step,
        method=method, adapter=training.adapter, adapter_base_dir=base_model,
    )  # fmt: skip
    # A step that ran a Pipes job hands Dagster typed events: the value wrapped in its Output.
    return dg.Output(trained, metadata=training_metadata(trained, run, png))


def fine_tuned_model_asset(step_pod: dict) -> dg.AssetsDefinition:
    """`fine_tuned_model`, its step asking Kubernetes (k8s_job_executor) for `step_pod`: a GPU pod when
    the training job runs inside the step's pod, a CPU pod when the job gets a GPU pod of its own."""
    return dg.asset(
        name="fine_tuned_model",
        group_name="model",
        kinds={"pytorch", "huggingface"},
        pool="training",  # one training or evaluation at a time per machine; later runs queue
        automation_condition=dg.AutomationCondition.eager(),
        op_tags=step_pod,
    )(sft_stage)


# Its step trains in its own pod (LocalTrainingJob): a GPU node. pipelines/definitions.py asks for a CPU pod
# instead (CPU_POD) when the training job gets a GPU pod of its own (FT_TRAINING_LAUNCHER=k8s).
fine_tuned_model = fine_tuned_model_asset(GPU_POD)
