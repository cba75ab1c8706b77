"""The training stages' settings, and their one mapping to TRL, PEFT and the model's load arguments.

Shared, not an asset: `fine_tuned_model` (SFT) and `preference_tuned_model` (DPO) train from one
`training` section of a preset, so the settings and `trainer_configs` live where both can read them.
Each stage calls `trainer_configs` and takes its part (`sft` or `dpo`, with `peft` and `model_kwargs`).

Methods (`method`): `sft` (supervised fine-tuning on the conversations), `dpo` (preference training
on the base model, no SFT), `sft+dpo` (SFT, then DPO on the merged SFT model, which is also DPO's
reference), `auto` (`sft+dpo` when the train split holds preference pairs, else `sft`).
Adapters (`adapter`): `lora`, `dora` (LoRA with a learned magnitude per output), `rslora` (LoRA scaled
by alpha/sqrt(r)), `full` (every weight trained, no adapter), `qlora` (LoRA on a 4-bit base loaded
through bitsandbytes: CUDA only).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

METHODS = ("auto", "sft", "dpo", "sft+dpo")
PRECISIONS = ("auto", "bf16", "fp32")
ADAPTERS = ("lora", "dora", "rslora", "full", "qlora")
# Adapters trained as a PEFT LoRA adapter beside frozen base weights (all but `full`).
LORA_ADAPTERS = ("lora", "dora", "rslora", "qlora")


class TrainingConfig(dg.ConfigurableResource):
    """Trainer and LoRA settings. Defaults are the `cpu` preset; presets override them by name."""

    preset: str = Field(default="cpu", description="Name of the preset these settings came from.")
    method: str = Field(
        default="auto",
        description="What to train: 'sft' (supervised, on the conversations), 'dpo' (preference pairs only, "
        "DPO on the base model), 'sft+dpo' (SFT, then DPO on the merged SFT model as its reference), or "
        "'auto': 'sft+dpo' when the train split holds preference pairs, else 'sft'.",
    )
    adapter: str = Field(
        default="lora",
        description="What is trained: 'lora', 'dora' (LoRA plus a learned magnitude per output), 'rslora' "
        "(LoRA scaled by alpha/sqrt(r), steadier at high rank), 'full' (every weight; use a learning rate "
        "near 1e-5), or 'qlora' (LoRA on a 4-bit base through bitsandbytes; needs a CUDA GPU).",
    )
    max_steps: int = Field(default=50, description="Optimizer steps to train for.")
    per_device_train_batch_size: int = Field(
        default=8, description="Examples per batch and device, at most (max_batch_tokens may allow fewer)."
    )
    max_batch_tokens: int = Field(
        default=2048,
        ge=0,
        description="Padded tokens per batch and device, at most: the rows times the longest row. A batch holds as "
        "many examples as fit this and per_device_train_batch_size, so a few long examples neither exhaust memory "
        "nor make a whole batch as wide as they are, while short examples still fill their batches; an example "
        "longer than this trains alone. Only where it binds (per_device_train_batch_size x the longest example is "
        "over it) do batches differ from batches of rows alone, grouped by length when group_by_length holds "
        "(resources/batch_order.py). The loss stays the mean over the step's assistant tokens, however many rows "
        "its batches hold. DPO's batches too (dpo_batch_size pairs at most, each pair two rows). 0: rows alone.",
    )
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
    precision: str = Field(
        default="auto",
        description="Matmul precision: 'bf16' (bfloat16 autocast over float32 weights), 'fp32', or 'auto': bf16 "
        "where the hardware multiplies bfloat16 natively (CUDA GPUs that support it; CPUs with AVX512-BF16 or "
        "AMX, about twice their float32 peak), else fp32 (emulated bf16 would be slower).",
    )
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
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations to save memory (costs ~20% speed)."
    )
    num_processes: int = Field(
        default=1,
        ge=1,
        description="Training processes, one per device: above 1 the SFT job runs under torchrun as data-parallel "
        "DDP (one process per GPU; gloo on a CPU), each process on its own shard of every batch. The examples per "
        "step are at most per_device_train_batch_size x num_processes x gradient_accumulation_steps.",
    )
    logging_steps: int = Field(default=5, description="Log the training loss every N steps.")
    save_steps: int = Field(
        default=10,
        description="Checkpoint every N steps under FT_HOME/checkpoints/<setup>/; a training killed midway "
        "resumes from the last checkpoint when launched again (0: no checkpoints).",
    )
    keep_checkpoints: int = Field(default=2, description="Checkpoints kept per training setup (the newest).")
    seed: int = Field(default=0, description="Seed for adapter init and data order.")
    dpo_max_steps: int = Field(
        default=4, description="DPO optimizer steps (methods dpo and sft+dpo), each on dpo_batch_size pairs."
    )
    dpo_batch_size: int = Field(
        default=4,
        description="Preference pairs per DPO step and device, at most (max_batch_tokens may allow fewer; a pair "
        "is two rows, prompt + chosen and prompt + rejected).",
    )
    dpo_learning_rate: float = Field(
        default=5e-5, description="Peak DPO learning rate (LoRA; use ~5e-7 to 5e-6 with adapter 'full')."
    )
    dpo_beta: float = Field(
        default=0.1,
        description="DPO's beta: how closely the tuned model is held to its reference (higher: closer).",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"training.method {value!r} is not one of {', '.join(METHODS)}.")
        return value

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"training.precision {value!r} is not one of {', '.join(PRECISIONS)}.")
        return value

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        if value not in ADAPTERS:
            raise ValueError(f"training.adapter {value!r} is not one of {', '.join(ADAPTERS)}.")
        return value


def resolve_method(method: str, preference_pairs: int) -> str:
    """The method a run trains with, from the setting and the train split's preference pairs:
    'auto' picks 'sft+dpo' when there are any, else 'sft'. DPO without pairs is refused."""
    if method == "auto":
        return "sft+dpo" if preference_pairs else "sft"
    if "dpo" in method and not preference_pairs:
        raise ValueError(
            f"training.method {method!r} trains on preference pairs (rows with prompt/chosen/rejected, "
            "kind 'preference'), and the train split holds none. Land preference data, or use method "
            "'sft' or 'auto'."
        )
    return method


def trains_sft(method: str) -> bool:
    return method in ("sft", "sft+dpo")


def trains_dpo(method: str) -> bool:
    return method in ("dpo", "sft+dpo")


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
    """What `trainer_configs` maps the settings to; each stage takes its part."""

    sft: Any
    """trl.SFTConfig for fine_tuned_model."""
    dpo: Any
    """trl.DPOConfig for preference_tuned_model."""
    peft: Any | None
    """peft.LoraConfig for every adapter but 'full' (None: all weights train)."""
    model_kwargs: dict[str, Any]
    """Extra arguments for loading the model trained on (`ModelLoader.load_model`): qlora's 4-bit
    quantization; empty otherwise."""
    max_batch_tokens: int
    """Padded tokens per batch and device, for SFT's and DPO's batch samplers
    (`resources.batch_order.BatchOrder`): TRL has no such setting."""


def trainer_configs(
    config: TrainingConfig, output_dir: Path, max_length: int, use_cpu: bool, new_tokens: list[int] | None = None
) -> TrainerSetup:
    """The one mapping from our TrainingConfig to TRL's SFTConfig and DPOConfig, PEFT's LoraConfig,
    the base model's load arguments and the token budget per batch. Refuses settings this device
    cannot run (qlora on a CPU). `new_tokens`: ids the base model's preparation added to its
    vocabulary (a chat template's tokens), whose embedding rows an adapter trains too."""
    refuse_unsupported(config, use_cpu)
    return TrainerSetup(
        sft=sft_config(config, output_dir, max_length, use_cpu),
        dpo=dpo_config(config, output_dir, use_cpu),
        peft=peft_config(config, new_tokens),
        model_kwargs=model_kwargs(config),
        max_batch_tokens=config.max_batch_tokens,
    )


def common_args(config: TrainingConfig, output_dir: Path, use_cpu: bool) -> dict[str, Any]:
    """What SFTConfig and DPOConfig take alike from the settings."""
    return {
        "output_dir": str(output_dir),
        "lr_scheduler_type": config.lr_scheduler_type,
        "weight_decay": config.weight_decay,
        # Both configs turn bf16 and gradient checkpointing on by default, even on CPU: decide explicitly.
        "bf16": uses_bf16(config.precision, use_cpu),
        "gradient_checkpointing": config.gradient_checkpointing,
        "report_to": "none",
        "seed": config.seed,
        "use_cpu": use_cpu,
        "disable_tqdm": True,
    }


def sft_config(config: TrainingConfig, output_dir: Path, max_length: int, use_cpu: bool):
    from trl import SFTConfig

    return SFTConfig(
        **common_args(config, output_dir, use_cpu),
        # Validation bounded every example's length (max_tokens), so nothing is cut either way; TRL
        # wants no max_length with padding-free batches that are not packed across examples.
        padding_free=config.padding_free,
        max_length=None if config.padding_free else max_length,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        # The dataset comes tokenized with its assistant mask (`training_dataset`): TRL builds the labels
        # from that mask, so the loss stays on the assistant's tokens. TRL's own assistant_only_loss
        # would re-render the messages itself and knows neither our tool rendering nor turn weights.
        assistant_only_loss=False,
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.keep_checkpoints,
    )


def dpo_config(config: TrainingConfig, output_dir: Path, use_cpu: bool):
    from trl import DPOConfig

    return DPOConfig(
        **common_args(config, output_dir, use_cpu),
        max_steps=config.dpo_max_steps,
        per_device_train_batch_size=config.dpo_batch_size,
        learning_rate=config.dpo_learning_rate,
        beta=config.dpo_beta,
        # Validation bounded every pair's length already (max_tokens): nothing to cut.
        max_length=None,
        # A DPO stage is a few steps: log each one, so its curve has points.
        logging_steps=1,
        save_strategy="no",
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
