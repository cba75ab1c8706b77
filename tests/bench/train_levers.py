"""The training speed levers one by one: TRL's SFTTrainer on the Dolly records with one setting
changed at a time, on the same LoRA r=16 all-linear, batch 8, seed 0.

    .venv/bin/python -m tests.bench.train_levers "fp32:" "grouped:train_sampling_strategy='group_by_length'" \\
        "bf16:bf16=True" "padding_free:padding_free=True"

Each argument is `name:SFTConfig overrides` (Python keyword syntax) over float32, no gradient
checkpointing, padded batches in random order. Prints non-pad tokens/s from step 2 on (the first
steps warm up) and the last losses. Needs ../shared/data/dolly (real records of uneven lengths).
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STEPS = int(os.environ.get("STEPS", 6))


def dataset(base: str):
    """The Dolly conversations as our training tokenizes them, rows over 512 tokens left out."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from assets.domain.chat import training_chat_template, training_tokens
    from tests.bench.train import MAX_LENGTH, source_conversations

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    tokens = [training_tokens(tokenizer, m, None, template) for m in source_conversations()[1]]
    return tokenizer, Dataset.from_list([t for t in tokens if len(t["input_ids"]) <= MAX_LENGTH])


def run(name: str, base: str, tokenizer, data, overrides: dict) -> None:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    args = dict(
        output_dir="/tmp/train-levers", per_device_train_batch_size=8, max_steps=STEPS, learning_rate=5e-4,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        assistant_only_loss=False, bf16=False, gradient_checkpointing=False, max_length=512,
    )  # fmt: skip
    args.update(overrides)
    if args.get("padding_free"):
        args["max_length"] = None
    times = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.time())

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=SFTConfig(**args),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[StepTimes()],
    )
    trainer.train()
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    rate = (tokens[-1] - tokens[1]) / (times[-1] - times[1])
    losses = [round(e["loss"], 3) for e in trainer.state.log_history if "loss" in e]
    print(f"{name}: tokens_per_second={rate:.1f} last_losses={losses[-3:]}", flush=True)


def main() -> int:
    import tempfile

    from assets.domain.chat import ready_for_chat
    from resources.models import ModelLoader

    with tempfile.TemporaryDirectory() as tmp:
        base = str(Path(tmp) / "base")
        ModelLoader().materialize_base(Path(base), prepare=ready_for_chat)
        tokenizer, data = dataset(base)
        for spec in sys.argv[1:]:
            name, _, rest = spec.partition(":")
            run(name, base, tokenizer, data, eval(f"dict({rest})"))  # noqa: S307 - a benchmark's own arguments
    return 0


if __name__ == "__main__":
    sys.exit(main())
