"""fine_tuned_model: a LoRA adapter trained with TRL's SFTTrainer on the train split."""

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.values import TrainedModel
from resources.models import ModelLoader
from resources.records import RecordSet
from resources.state import StateStore


class TrainingConfig(dg.ConfigurableResource):
    """Trainer and LoRA settings. Defaults are the `cpu` preset; presets override them by name."""

    preset: str = Field(default="cpu", description="Name of the preset these settings came from.")
    max_steps: int = Field(default=50, description="Optimizer steps to train for.")
    per_device_train_batch_size: int = Field(default=8, description="Examples per step and device.")
    gradient_accumulation_steps: int = Field(default=1, description="Steps whose gradients are summed.")
    learning_rate: float = Field(default=5e-4, description="Peak learning rate.")
    lr_scheduler_type: str = Field(default="cosine", description="transformers scheduler name.")
    warmup_steps: int = Field(default=10, description="Linear warm-up steps before the peak rate.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay.")
    lora_r: int = Field(default=16, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.0, description="Dropout on the LoRA path.")
    lora_target_modules: str = Field(
        default="all-linear", description="Modules given adapters: 'all-linear' or comma-separated names."
    )
    bf16: bool = Field(default=False, description="bfloat16 autocast (use on GPUs; slower to converge on CPU).")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations to save memory (costs ~20% speed)."
    )
    logging_steps: int = Field(default=5, description="Log the training loss every N steps.")
    seed: int = Field(default=0, description="Seed for adapter init and data order.")


def trainer_configs(config: TrainingConfig, output_dir: Path, max_length: int, use_cpu: bool):
    """The one mapping from our TrainingConfig to TRL's SFTConfig and PEFT's LoraConfig."""
    from peft import LoraConfig
    from trl import SFTConfig

    targets = config.lora_target_modules
    sft = SFTConfig(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        # SFTConfig turns both on by default, even on CPU: always decide explicitly.
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        # The dataset comes tokenized with its assistant mask (`training_dataset`): TRL builds the labels
        # from that mask, so the loss stays on the assistant's tokens. TRL's own assistant_only_loss
        # would re-render the messages itself and knows neither our tool rendering nor turn weights.
        assistant_only_loss=False,
        max_length=max_length,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=use_cpu,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    return sft, lora


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


def train_adapter(
    training: TrainingConfig, base_model: str, train: pd.DataFrame, models: ModelLoader, out_dir: Path, log
) -> TrainingRun:
    """Train a LoRA adapter on `train`'s conversations with TRL's SFTTrainer, loss on the
    assistant's tokens only. `log` receives each of the trainer's log lines."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    # Validation already rejected every example longer than its max_tokens, so nothing is truncated.
    max_length = int(train["n_tokens"].max())
    sft_config, lora_config = trainer_configs(
        training, out_dir / "trainer", max_length, models.resolved_device() == "cpu"
    )
    tokenizer = models.load_tokenizer(base_model)  # saved with the model: serving renders as the base did

    class LogToDagster(TrainerCallback):
        def on_log(self, args, state_, control, logs=None, **kwargs):
            if logs:
                log(f"step {state_.global_step}: {logs}")

    trainer = SFTTrainer(
        model=models.load_model(base_model),
        args=sft_config,
        train_dataset=training_dataset(tokenizer, train),
        processing_class=tokenizer,
        peft_config=lora_config,
        callbacks=[LogToDagster()],
    )
    started = time.time()
    result = trainer.train()
    seconds = time.time() - started
    history = [h for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen or (history[-1].get("num_tokens", 0) if history else 0)
    curve = [(h["step"], float(h["loss"])) for h in history]
    return TrainingRun(trainer, tokenizer, float(result.training_loss), seconds, curve, int(tokens))


def save_models(run: TrainingRun, out_dir: Path, state: StateStore) -> tuple[Path, Path]:
    """The adapter, and the adapter merged into the base weights (a plain model for serving),
    each written atomically; returns both folders."""
    adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
    with state.atomic_dir(adapter_dir) as scratch:
        run.trainer.model.save_pretrained(scratch)
        run.tokenizer.save_pretrained(scratch)
    with state.atomic_dir(merged_dir) as scratch:
        run.trainer.model.merge_and_unload().save_pretrained(scratch)
        run.tokenizer.save_pretrained(scratch)
    return adapter_dir, merged_dir


def training_metadata(trained: TrainedModel, run: TrainingRun, png: bytes) -> dict:
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
        "loss_curve": dg.MetadataValue.md(
            f"![loss curve](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
            + pd.DataFrame({"step": steps, "loss": losses}).to_markdown(index=False)
        ),
        "adapter_dir": dg.MetadataValue.path(trained.adapter_dir),
        "merged_dir": dg.MetadataValue.path(trained.merged_dir),
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
) -> TrainedModel:
    """A LoRA adapter on `base_model`, trained by TRL's SFTTrainer on the train split of
    `instruction_pairs` with loss on the assistant's tokens only; plus the adapter merged into the
    base weights (a plain model for serving). The value holds both folders' paths, the settings
    and the loss curve; the folders live under FT_HOME/artifacts/fine_tuned_model/<run id>/.
    """
    train = instruction_pairs.frame(where=[("split", "=", "train"), ("kind", "=", "sft")])
    out_dir = state.asset_dir("fine_tuned_model", context.run.run_id)
    run = train_adapter(training, base_model, train, models, out_dir, context.log.info)
    adapter_dir, merged_dir = save_models(run, out_dir, state)
    png = loss_curve_png([s for s, _ in run.loss_curve], [loss for _, loss in run.loss_curve])
    (out_dir / "loss_curve.png").write_bytes(png)
    trained = TrainedModel(
        adapter_dir=str(adapter_dir),
        merged_dir=str(merged_dir),
        loss_curve_png=str(out_dir / "loss_curve.png"),
        preset=training.preset,
        settings={k: v for k, v in training.model_dump().items() if k != "preset"},
        device=models.resolved_device(),
        max_length=int(train["n_tokens"].max()),
        train_examples=len(train),
        steps=run.trainer.state.global_step,
        train_loss=run.train_loss,
        train_seconds=run.seconds,
        loss_curve=tuple(run.loss_curve),
    )
    context.add_output_metadata(training_metadata(trained, run, png))
    return trained
