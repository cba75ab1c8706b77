"""The training settings, typed, one section per method, and their one mapping to TRL, PEFT and the
model's load arguments.

Shared, not an asset: `fine_tuned_model` (SFT) and `preference_tuned_model` (DPO or GRPO) train from
one `training` section of a preset, and the recipes (`assets/recipes/`) read it in their own processes.

    training:
      method: sft+grpo        # what trains (below)
      adapter: lora           # what is trained, and the settings every method shares
      sft:  {max_steps: 50, learning_rate: 0.00025}
      dpo:  {max_steps: 4, beta: 0.1}
      grpo: {max_steps: 12, num_generations: 4, rewards: [field_accuracy]}

Methods (`method`): `sft` (supervised fine-tuning on the conversations), `dpo` (preference training
on the base model, no SFT), `sft+dpo` (SFT, then DPO on the merged SFT model, which is also DPO's
reference), `grpo` (online reinforcement learning with verifiable rewards on the base model: TRL's
GRPOTrainer samples answers to the train prompts and learns from their rewards), `sft+grpo` (SFT, then
GRPO from the merged SFT model), `auto` (`sft+dpo` when the train split holds preference pairs, else `sft`).
Adapters (`adapter`): `lora`, `dora` (LoRA with a learned magnitude per output), `rslora` (LoRA scaled
by alpha/sqrt(r)), `full` (every weight trained, no adapter), `qlora` (LoRA on a 4-bit base loaded
through bitsandbytes: CUDA only).
A key a section does not have is refused with its name and the section's keys; the settings of
the flat layout before the sections (`dpo_beta`, `max_steps`, ...) are refused with their new place.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, model_validator

Method = Literal["auto", "sft", "dpo", "sft+dpo", "grpo", "sft+grpo"]
Adapter = Literal["lora", "dora", "rslora", "full", "qlora"]
Precision = Literal["auto", "bf16", "fp32"]
METHODS: tuple[str, ...] = Method.__args__
ADAPTERS: tuple[str, ...] = Adapter.__args__
PRECISIONS: tuple[str, ...] = Precision.__args__
# Adapters trained as a PEFT LoRA adapter beside frozen base weights (all but `full`).
LORA_ADAPTERS = ("lora", "dora", "rslora", "qlora")
# The second stage of each method that has one (preference_tuned_model trains it).
SECOND_STAGES = ("dpo", "grpo")


def refuse_unknown(cls, values: Any, where: str, moved: dict[str, str] | None = None) -> Any:
    """Settings are typed: a key `cls` does not have is refused with its name and the valid ones (or,
    for a setting of the flat layout before the sections, with its new place)."""
    if not isinstance(values, dict):
        return values
    unknown = [k for k in values if k not in cls.model_fields]
    if not unknown:
        return values
    lines = [f"{where}.{k} is now {where}.{moved[k]}" for k in unknown if moved and k in moved]
    others = [k for k in unknown if not (moved and k in moved)]
    if others:
        lines.append(f"unknown setting(s) {where}.{', '.join(others)}; {where} has: {', '.join(cls.model_fields)}")
    raise ValueError("; ".join(lines) + ".")


class Section(dg.Config):
    """One method's section of the `training` settings; unknown keys are refused."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        return refuse_unknown(cls, values, f"training.{cls.section}")


class SftSettings(Section):
    """`training.sft`: supervised fine-tuning (TRL's SFTTrainer), methods sft, sft+dpo and sft+grpo."""

    section: ClassVar[str] = "sft"
    max_steps: int = Field(default=50, ge=1, description="Optimizer steps to train for.")
    per_device_train_batch_size: int = Field(
        default=8, ge=1, description="Examples per batch and device, at most (max_batch_tokens may allow fewer)."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Steps whose gradients are summed.")
    learning_rate: float = Field(default=2.5e-4, description="Peak learning rate.")
    warmup_steps: int = Field(default=10, ge=0, description="Linear warm-up steps before the peak rate.")
    group_by_length: bool = Field(
        default=True,
        description="Batch examples of similar length together, the batches in random order "
        "(resources/batch_order.py), so a padded batch holds little padding, when random batches would be more "
        "than `group_by_length_min_padding` padding: on Dolly about half of a random batch is padding, and "
        "grouping made CPU training about 1.4x faster at the same eval loss. Grouped batches are less varied, "
        "which cost exact match on the sample tickets (0.56 -> 0.44), whose random batches are 7% padding: "
        "there it is not worth it, and the threshold leaves them ungrouped (BENCHMARKS.md).",
    )
    group_by_length_min_padding: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Group by length only when the train split's random batches would be more than this share "
        "padding (0: whenever group_by_length is on).",
    )
    padding_free: bool = Field(
        default=False,
        description="Pack each batch's examples into one row with no padding at all; attention stays inside "
        "each example (transformers masks per example from the position ids; FlashAttention uses its "
        "variable-length kernels). Same loss as padded batches. Pays with FlashAttention; under SDPA (CPU) "
        "the mask is dense over the batch's tokens and length-grouped padded batches are faster.",
    )
    validation_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the train split's prompts held back from training for validation, chosen by a hash "
        "of each example_id and the seed (the same examples every run, whatever the row order; "
        "assets/domain/validation_slice.py); the eval split stays untouched for the promotion gate. When above 0: "
        "the loss on them every eval_steps (MLflow `validation.loss`), a checkpoint at every validation (in place "
        "of save_steps, even with save_steps 0: keeping the best model needs its checkpoint), and the checkpoint "
        "of the lowest validation loss is the model saved. 0: no validation, the last step's model is saved.",
    )
    eval_steps: int = Field(
        default=10,
        ge=1,
        description="With validation: measure the validation loss (and checkpoint) every N steps. Make max_steps a "
        "multiple of it: steps after the last validation are never kept as the best.",
    )
    early_stopping_patience: int = Field(
        default=0,
        ge=0,
        description="Stop training after this many validations in a row without an improvement of more than "
        "early_stopping_threshold over the best validation loss (transformers' EarlyStoppingCallback); the best "
        "checkpoint is then the model. Needs validation (validation_fraction above 0). 0: never stop early.",
    )
    early_stopping_threshold: float = Field(
        default=0.0,
        ge=0.0,
        description="How much lower than the best so far a validation loss must be to count as an improvement "
        "for early stopping (0: any decrease).",
    )

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> "SftSettings":
        if self.early_stopping_patience > 0 and self.validation_fraction == 0:
            raise ValueError(
                f"training.sft.early_stopping_patience is {self.early_stopping_patience}, but "
                "training.sft.validation_fraction is 0: early stopping watches the validation loss, and there is "
                "no validation slice. Set training.sft.validation_fraction (e.g. 0.1), or "
                "training.sft.early_stopping_patience to 0."
            )
        return self

    @property
    def validates(self) -> bool:
        """Whether SFT holds back a validation slice (and keeps the best checkpoint)."""
        return self.validation_fraction > 0


class DpoSettings(Section):
    """`training.dpo`: preference training (TRL's DPOTrainer), methods dpo and sft+dpo."""

    section: ClassVar[str] = "dpo"
    max_steps: int = Field(
        default=4, ge=1, description="DPO optimizer steps, each on per_device_train_batch_size pairs."
    )
    per_device_train_batch_size: int = Field(
        default=4,
        ge=1,
        description="Preference pairs per step and device, at most (max_batch_tokens may allow fewer; a pair is "
        "two rows, prompt + chosen and prompt + rejected).",
    )
    learning_rate: float = Field(
        default=5e-5, description="Peak DPO learning rate (LoRA; use ~5e-7 to 5e-6 with adapter 'full')."
    )
    beta: float = Field(
        default=0.1, description="DPO's beta: how closely the tuned model is held to its reference (higher: closer)."
    )


class GrpoSettings(Section):
    """`training.grpo`: online reinforcement learning with verifiable rewards (TRL's GRPOTrainer), methods
    grpo and sft+grpo. Each step samples `num_generations` answers to each of its prompts, scores them with
    the rewards, and raises the likelihood of the answers that scored above their group's mean."""

    section: ClassVar[str] = "grpo"
    max_steps: int = Field(default=16, ge=1, description="GRPO optimizer steps.")
    per_device_train_batch_size: int = Field(
        default=8,
        ge=1,
        description="Sampled answers per step and device (TRL counts completions, not prompts): the prompts per "
        "step are this divided by num_generations (times num_processes).",
    )
    num_generations: int = Field(
        default=4,
        ge=2,
        description="Answers sampled per prompt: a prompt's answers are scored against each other (the group), "
        "so at least 2, and per_device_train_batch_size x num_processes must be a multiple of it.",
    )
    max_completion_length: int = Field(
        default=0,
        ge=0,
        description="Tokens each sampled answer may have (an answer cut there usually scores 0). 0 (auto): from "
        "the train answers' token lengths as evaluation's auto budget (95th percentile plus a quarter, plus the "
        "end-of-turn token), at most 256.",
    )
    temperature: float = Field(default=1.0, gt=0.0, description="Sampling temperature of the answers.")
    learning_rate: float = Field(
        default=5e-4,
        description="Peak GRPO learning rate. For LoRA on a short CPU run; TRL's default, 1e-6, suits all weights "
        "('full') over hundreds of steps. On the sample tickets 2e-4 left the reward flat in 12 steps (BENCHMARKS.md).",
    )
    beta: float = Field(
        default=0.04,
        ge=0.0,
        description="Weight of the KL penalty that holds the policy near the model it started from (with an adapter, "
        "that model is the adapter switched off: one more forward pass a step). 0: no penalty, and grpo.kl is not "
        "tracked (TRL's default).",
    )
    epsilon: float = Field(default=0.2, gt=0.0, description="Clipping range of the policy ratio (PPO's epsilon).")
    num_iterations: int = Field(default=1, ge=1, description="Optimizer passes over each batch of sampled answers.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        default="dapo", description="How the per-token loss is normalised (TRL's loss_type)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group", description="Divide each advantage by the reward's std over its group, its batch, or not."
    )
    rewards: list[str] = Field(
        default=[],
        description="The rewards, by name, from what evaluation checks: exact_match (with evaluation's "
        "answer_pattern when set), json_valid and field_accuracy (JSON answers), tool_name_accuracy (tool calls), "
        "rougeL. Empty: the task's (an answer pattern: exact_match; JSON answers: exact_match, json_valid, "
        "field_accuracy; tool calls: exact_match, tool_name_accuracy; free text: rougeL).",
    )
    reward_weights: list[float] = Field(
        default=[],
        description="A weight per reward, in order (the user's function last); empty: all 1.",
    )
    reward_function: str = Field(
        default="",
        description="A reward of your own, added to the others: 'package.module:function' or "
        "'path/to/file.py:function', called as function(prompts, completions, answer, **columns) -> list[float].",
    )


# Where each setting of the flat layout (before the method sections) went.
MOVED = {
    **{k: f"sft.{k}" for k in SftSettings.model_fields},
    **{f"dpo_{k}": f"dpo.{k}" for k in DpoSettings.model_fields},
    "dpo_batch_size": "dpo.per_device_train_batch_size",
}


class TrainingConfig(dg.ConfigurableResource):
    """The `training` section: the method, what is trained and how it runs (shared by every method),
    and one section per method. Defaults are the `cpu` preset; presets override them by name."""

    preset: str = Field(default="cpu", description="Name of the preset these settings came from.")
    method: Method = Field(
        default="auto",
        description="What to train: 'sft' (supervised, on the conversations), 'dpo' (preference pairs only, DPO on "
        "the base model), 'sft+dpo' (SFT, then DPO on the merged SFT model as its reference), 'grpo' (GRPO with "
        "rewards on the base model), 'sft+grpo' (SFT, then GRPO from the merged SFT model), or 'auto': 'sft+dpo' "
        "when the train split holds preference pairs, else 'sft'.",
    )
    adapter: Adapter = Field(
        default="lora",
        description="What is trained: 'lora', 'dora' (LoRA plus a learned magnitude per output), 'rslora' "
        "(LoRA scaled by alpha/sqrt(r), steadier at high rank), 'full' (every weight; use a learning rate "
        "near 1e-5), or 'qlora' (LoRA on a 4-bit base through bitsandbytes; needs a CUDA GPU).",
    )
    start_from: Literal["base", "champion"] = Field(
        default="base",
        description="What a retrain starts from: 'base' (the base model, on every drop to date or the latest "
        "split.drops_window) or 'champion' (the registered version holding alias champion: its adapter trained on, "
        "when it is an adapter of this kind and shape on this base model, else a new adapter on its merged weights; "
        "on the drops it has not learnt from plus a replay share of the ones it has, `replay_fraction`). With no "
        "champion yet, or one trained on another base model, it starts from the base and says so.",
    )
    replay_fraction: float = Field(
        default=0.25,
        ge=0.0,
        lt=1.0,
        description="start_from 'champion': the share of the examples drawn from drops the champion already learnt "
        "from (sampled by example hash and seed), so it rehearses what it knew while it learns the new drops "
        "(0: the new drops alone). When every train drop is old, the whole train split trains.",
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target_modules: str = Field(
        default="all-linear", description="Modules given adapters: 'all-linear' or comma-separated names."
    )
    precision: Precision = Field(
        default="auto",
        description="Matmul precision: 'bf16' (bfloat16 autocast over float32 weights), 'fp32', or 'auto': bf16 "
        "where the hardware multiplies bfloat16 natively (CUDA GPUs that support it; CPUs with AVX512-BF16 or "
        "AMX, about twice their float32 peak), else fp32 (emulated bf16 would be slower).",
    )
    max_batch_tokens: int = Field(
        default=2048,
        ge=0,
        description="Padded tokens per batch and device, at most: the rows times the longest row (SFT's and DPO's "
        "batches). A batch holds as many examples as fit this and its section's per_device_train_batch_size, so a "
        "few long examples neither exhaust memory nor make a whole batch as wide as they are, while short "
        "examples still fill their batches; an example longer than this trains alone. Only where it binds are "
        "batches different from batches of rows alone (resources/batch_order.py). The loss stays the mean over "
        "the step's assistant tokens, however many rows its batches hold. 0: rows alone.",
    )
    lr_scheduler_type: str = Field(default="cosine", description="transformers scheduler name, every method.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay, every method.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations to save memory (costs ~20% speed)."
    )
    num_processes: int = Field(
        default=1,
        ge=1,
        description="Training processes, one per device: above 1 every method's job runs under torchrun as "
        "data-parallel DDP (one process per GPU; gloo on a CPU), each process on its own shard of every batch.",
    )
    logging_steps: int = Field(
        default=5, ge=1, description="Log the training loss every N steps (DPO, GRPO: every step)."
    )
    save_steps: int = Field(
        default=10,
        ge=0,
        description="Checkpoint every N steps under FT_HOME/checkpoints/<setup>/ (every method); a training killed "
        "midway resumes from its last checkpoint when launched again (0: no checkpoints). SFT with validation "
        "(sft.validation_fraction) checkpoints at every validation instead (sft.eval_steps).",
    )
    keep_checkpoints: int = Field(
        default=2,
        ge=1,
        description="Checkpoints kept per training setup: the newest (and, with SFT validation, the best one besides).",
    )
    seed: int = Field(default=0, description="Seed for adapter init, data order and sampling.")
    sft: SftSettings = Field(default_factory=SftSettings, description="Supervised fine-tuning (TRL's SFTTrainer).")
    dpo: DpoSettings = Field(default_factory=DpoSettings, description="Preference training (TRL's DPOTrainer).")
    grpo: GrpoSettings = Field(
        default_factory=GrpoSettings, description="Reinforcement learning with rewards (TRL's GRPOTrainer)."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        return refuse_unknown(cls, values, "training", MOVED)

    def with_sft(self, **changes) -> "TrainingConfig":
        """These settings with some of the `sft` section's changed (as the stage decided them)."""
        return self.model_copy(update={"sft": self.sft.model_copy(update=changes)})

    def shared(self) -> dict[str, Any]:
        """The settings every method shares: all but the method sections and the preset's name."""
        return {k: v for k, v in self.model_dump().items() if k not in ("preset", *METHOD_SECTIONS)}

    def flat(self) -> dict[str, Any]:
        """Every setting but the preset's name, a section's as `section.key` (MLflow params, the model card)."""
        values = self.shared()
        for section in METHOD_SECTIONS:
            values |= {f"{section}.{k}": v for k, v in getattr(self, section).model_dump().items()}
        return values

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """What decides what `stage` ('sft', 'dpo', 'grpo') learns: the shared settings and its own section."""
        return {**self.shared(), stage: getattr(self, stage).model_dump()}


METHOD_SECTIONS = ("sft", "dpo", "grpo")


def resolve_method(method: str, preference_pairs: int) -> str:
    """The method a run trains with, from the setting and the train split's preference pairs:
    'auto' picks 'sft+dpo' when there are any, else 'sft'. DPO without pairs is refused."""
    if method == "auto":
        return "sft+dpo" if preference_pairs else "sft"
    if "dpo" in method and not preference_pairs:
        raise ValueError(
            f"training.method {method!r} trains on preference pairs (rows with prompt/chosen/rejected, "
            "kind 'preference'), and the train split holds none. Land preference data, or use method "
            "'sft', 'grpo' or 'auto'."
        )
    return method


def trains_sft(method: str) -> bool:
    return method in ("sft", "sft+dpo", "sft+grpo")


def second_stage(method: str) -> str | None:
    """What `preference_tuned_model` trains for `method`: 'dpo', 'grpo', or None (the SFT model is the candidate)."""
    return next((stage for stage in SECOND_STAGES if stage in method.split("+")), None)


def trains_dpo(method: str) -> bool:
    return second_stage(method) == "dpo"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX): there bf16 autocast
    runs about twice as fast as float32; elsewhere it is emulated and slower."""
    if not cpuinfo.is_file():
        return False
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def uses_bf16(precision: str, use_cpu: bool) -> bool:
    """The precision setting resolved on this device ('auto': bf16 where the hardware has it)."""
    if precision != "auto":
        return precision == "bf16"
    if use_cpu:
        return cpu_has_native_bf16()
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def refuse_unsupported(config: TrainingConfig, use_cpu: bool) -> None:
    """Stop before any model loads when the settings cannot run on this device."""
    if config.adapter == "qlora" and use_cpu:
        raise ValueError(
            "training.adapter 'qlora' loads the base model in 4 bits through bitsandbytes, whose 4-bit "
            "kernels need a CUDA GPU, and this run's device is the CPU. On a CPU use adapter 'lora' (the "
            "same adapter on a full-precision base; a 135M model fits easily), or run on a GPU with "
            "bitsandbytes installed (pip install bitsandbytes)."
        )


@dataclass(frozen=True)
class TrainerSetup:
    """What `trainer_setup` maps the settings to for one stage."""

    args: Any
    """trl.SFTConfig, DPOConfig or GRPOConfig."""
    peft: Any | None
    """peft.LoraConfig for every adapter but 'full' (None: all weights train)."""
    model_kwargs: dict[str, Any]
    """Extra arguments for loading the model trained on (`ModelLoader.load_model`): qlora's 4-bit
    quantization; empty otherwise."""
    max_batch_tokens: int
    """Padded tokens per batch and device, for SFT's and DPO's batch samplers
    (`resources.batch_order.BatchOrder`): TRL has no such setting."""
    callbacks: tuple = ()
    """transformers callbacks the settings ask for: SFT's early stopping (`EarlyStoppingCallback`)."""


def trainer_setup(
    stage: str,
    config: TrainingConfig,
    output_dir: Path,
    use_cpu: bool,
    max_length: int = 0,
    new_tokens: list[int] | None = None,
) -> TrainerSetup:
    """The one mapping from our settings to TRL's config for `stage` ('sft', 'dpo', 'grpo'), PEFT's
    LoraConfig, the base model's load arguments and the token budget per batch. Refuses settings this
    device cannot run (qlora on a CPU). `new_tokens`: ids the base model's preparation added to its
    vocabulary (a chat template's tokens), whose embedding rows an adapter trains too. `max_length`:
    the longest SFT example (validation bounded them all)."""
    refuse_unsupported(config, use_cpu)
    args = {"sft": sft_config, "dpo": dpo_config, "grpo": grpo_config}[stage]
    return TrainerSetup(
        args=args(config, output_dir, use_cpu, max_length),
        peft=peft_config(config, new_tokens),
        model_kwargs=model_kwargs(config),
        max_batch_tokens=config.max_batch_tokens,
        callbacks=early_stopping(config) if stage == "sft" else (),
    )


def common_args(config: TrainingConfig, output_dir: Path, use_cpu: bool, section) -> dict[str, Any]:
    """What every TRL config takes alike: the shared settings, and the section's steps, batch and rate."""
    return {
        "output_dir": str(output_dir),
        "max_steps": section.max_steps,
        "per_device_train_batch_size": section.per_device_train_batch_size,
        "learning_rate": section.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "weight_decay": config.weight_decay,
        # TRL's configs turn bf16 and gradient checkpointing on by default, even on CPU: decide explicitly.
        "bf16": uses_bf16(config.precision, use_cpu),
        "gradient_checkpointing": config.gradient_checkpointing,
        "report_to": "none",
        "seed": config.seed,
        "use_cpu": use_cpu,
        "disable_tqdm": True,
        # Checkpoints every save_steps into output_dir (the setup's checkpoint folder), so a killed training resumes.
        "save_strategy": "steps" if config.save_steps else "no",
        "save_steps": config.save_steps or 500,
        "save_total_limit": config.keep_checkpoints,
    }


def sft_config(config: TrainingConfig, output_dir: Path, use_cpu: bool, max_length: int):
    from trl import SFTConfig

    sft = config.sft
    return SFTConfig(
        **(common_args(config, output_dir, use_cpu, sft) | validation_args(sft)),
        # Validation bounded every example's length (max_tokens), so nothing is cut either way; TRL
        # wants no max_length with padding-free batches that are not packed across examples.
        padding_free=sft.padding_free,
        max_length=None if sft.padding_free else max_length,
        train_sampling_strategy="group_by_length" if sft.group_by_length else "random",
        gradient_accumulation_steps=sft.gradient_accumulation_steps,
        warmup_steps=sft.warmup_steps,
        # The dataset comes tokenized with its assistant mask (`training_dataset`): TRL builds the labels
        # from that mask, so the loss stays on the assistant's tokens. TRL's own assistant_only_loss
        # would re-render the messages itself and knows neither our tool rendering nor turn weights.
        assistant_only_loss=False,
        logging_steps=config.logging_steps,
    )


def validation_args(sft: SftSettings) -> dict[str, Any]:
    """With a validation slice: its loss every eval_steps, and the checkpoint of the lowest one loaded at the
    end (then saved as the model). transformers loads the best only from a checkpoint and wants save_steps a
    multiple of eval_steps, so a checkpoint is written at every validation: the best is always one of them,
    and save_total_limit (keep_checkpoints) never deletes it (transformers keeps the best checkpoint besides
    the newest). Without validation: nothing (common_args' checkpoints)."""
    if not sft.validates:
        return {}
    return {
        "eval_strategy": "steps",
        "eval_steps": sft.eval_steps,
        "per_device_eval_batch_size": sft.per_device_train_batch_size,
        "save_strategy": "steps",
        "save_steps": sft.eval_steps,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        # A resumed training goes on counting validations without improvement where it stopped.
        "restore_callback_states_from_checkpoint": True,
    }


def early_stopping(config: TrainingConfig) -> tuple:
    """transformers' EarlyStoppingCallback when `sft.early_stopping_patience` asks for it (it stops on the
    validation loss that validation_args selects the best model by)."""
    sft = config.sft
    if not sft.early_stopping_patience:
        return ()
    from transformers import EarlyStoppingCallback

    return (EarlyStoppingCallback(sft.early_stopping_patience, sft.early_stopping_threshold),)


def dpo_config(config: TrainingConfig, output_dir: Path, use_cpu: bool, max_length: int = 0):
    from trl import DPOConfig

    return DPOConfig(
        **common_args(config, output_dir, use_cpu, config.dpo),
        beta=config.dpo.beta,
        # Validation bounded every pair's length already (max_tokens): nothing to cut.
        max_length=None,
        # A DPO stage is a few steps: log each one, so its curve has points.
        logging_steps=1,
    )


def grpo_config(config: TrainingConfig, output_dir: Path, use_cpu: bool, max_length: int = 0):
    from trl import GRPOConfig

    grpo = config.grpo
    return GRPOConfig(
        **common_args(config, output_dir, use_cpu, grpo),
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
        epsilon=grpo.epsilon,
        num_iterations=grpo.num_iterations,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        reward_weights=list(grpo.reward_weights) or None,
        # Each step samples and scores: log each one, so the reward curve has points.
        logging_steps=1,
    )


def peft_config(config: TrainingConfig, new_tokens: list[int] | None = None):
    """The LoRA adapter for every adapter kind but 'full': DoRA and rsLoRA are LoRA switches, and
    QLoRA is plain LoRA over a 4-bit base (the quantization is in `model_kwargs`). Tokens the base
    model was given (`new_tokens`: ChatML's for a model without a chat template) start as untrained
    embedding rows: PEFT trains those rows alone (`trainable_token_indices`), so the model can learn
    to read and write its new end-of-turn token while every other embedding stays frozen."""
    if config.adapter == "full":
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        use_dora=config.adapter == "dora",
        use_rslora=config.adapter == "rslora",
        trainable_token_indices=list(new_tokens) if new_tokens else None,
        task_type="CAUSAL_LM",
    )


def model_kwargs(config: TrainingConfig) -> dict[str, Any]:
    """qlora: the base in 4-bit NF4 with double quantization (the QLoRA recipe), computing in
    bfloat16 when the precision is bf16 (qlora runs on CUDA only); every other adapter loads the model as it is."""
    if config.adapter != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if uses_bf16(config.precision, False) else torch.float32,
        )
    }
