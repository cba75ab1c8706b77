"""Benchmark: our training stage as the `cpu` preset runs it, beside plain TRL on the same work;
and batched generation beside one-at-a-time `generate`.

    make bench-train     (or: .venv/bin/python -m tests.bench.train --steps 12)

Both trainings start from the bundled SmolLM2-135M and make one pass over the same steps x batch
examples (the Dolly records in ../shared/data/dolly/ when present, else the sample tickets; each
side batches them its own way), then are scored by one eval-loss function on the same held-out
examples (the answer's tokens). Plain TRL is `SFTConfig` with its documented defaults
(bf16 autocast, gradient checkpointing, padded batches) and LoRA r=16 on all linear layers, the way
TRL's quickstart trains; only the learning-rate schedule is ours, so the eval losses compare the
speed levers and not two schedules. Each side runs in a process of its own (its own peak RSS).

Prints, last: `train_speedup_vs_trl=<x>` (non-pad tokens/s, ours / plain TRL),
`eval_loss_ratio=<ours/trl>`, `mfu_ours=` / `mfu_trl=` (4 x params FLOPs per trained token against
the matmul peak measured here in the dtype each side multiplies in), and
`eval_speedup_vs_naive=<x>` (model_evaluation's batched greedy generation as the cpu preset runs it: its
new-token budget for these prompts and its generation_batch_size, vs a loop of one-prompt `generate`
calls, on the same 32 held-out Dolly prompts, and the count of answers that differ).
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOLLY = Path(__file__).resolve().parents[3] / "shared" / "data" / "dolly" / "dolly-1147.jsonl"
MAX_LENGTH = 512
EVAL_EXAMPLES = 32
# Generation is timed on every held-out example, with the new-token budget model_evaluation gives these
# prompts under the cpu preset (max_new_tokens 0: from the reference answers' lengths, at most
# max_new_tokens_cap) and the preset's generation_batch_size.
CPU_PRESET = Path(__file__).resolve().parents[2] / "pipelines" / "presets" / "cpu.yaml"


def source_conversations() -> tuple[str, list[list[dict]]]:
    """Conversations (system prompt, user turn, assistant answer) from Dolly, else from the sample tickets."""
    from assets.domain.chat import DEFAULT_SYSTEM_PROMPT, with_system

    if DOLLY.is_file():
        rows = [json.loads(line) for line in DOLLY.open()]
        name, user, answer = "dolly (../shared/data)", "context", "response"
    else:
        from pipelines.sample_data.generate import ticket

        rng = random.Random(0)
        rows = [ticket(rng) for _ in range(600)]
        name, user, answer = "sample tickets (dolly not found)", "input", "output"
    conversations = []
    for r in rows:
        prompt = r["instruction"] + (f"\n\n{r[user]}" if r.get(user) else "")
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": r[answer]}]
        conversations.append(with_system(turns, DEFAULT_SYSTEM_PROMPT))
    return name, conversations


def examples(base: str) -> dict:
    """The train and held-out examples, tokenized the way our training renders them; rows over
    MAX_LENGTH tokens are left out on both sides (nothing is truncated). Deterministic."""
    import pandas as pd
    from transformers import AutoTokenizer

    from assets.domain.chat import training_chat_template, training_tokens

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    name, conversations = source_conversations()
    rows = []
    for messages in conversations:
        tokens = training_tokens(tokenizer, messages, None, template)
        if len(tokens["input_ids"]) <= MAX_LENGTH:
            rows.append({"messages": messages, "tools": None, "n_tokens": len(tokens["input_ids"]), **tokens})
    random.Random(0).shuffle(rows)
    frame = pd.DataFrame(rows)
    return {
        "source": name,
        "eval": frame.iloc[:EVAL_EXAMPLES],
        "train": frame.iloc[EVAL_EXAMPLES:],
        "tokenizer": tokenizer,
    }


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of one large square matmul on this machine in `dtype_name` (the MFU denominator)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def step_timer():
    """A callback timing the training from its first step on (model loading and data preparation
    are not training speed)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        started = ended = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = self.started or time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()

    return StepTimer()


def training_settings(steps: int, batch: int):
    from assets.domain.training import TrainingConfig
    from pipelines.presets import load_preset

    values = load_preset("cpu")["training"]
    sft = {**values.get("sft", {}), "max_steps": steps, "per_device_train_batch_size": batch}
    return TrainingConfig(**{**values, "sft": sft, "save_steps": 0, "method": "sft"})


def train_plain_trl(base: str, data: dict, steps: int, batch: int):
    """Plain TRL: SFTConfig defaults, LoRA r=16 on all linear layers, on the conversations."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ours = training_settings(steps, batch)
    timer = step_timer()
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=SFTConfig(
            output_dir=tempfile.mkdtemp(),
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=ours.sft.learning_rate,
            lr_scheduler_type=ours.lr_scheduler_type,
            warmup_steps=ours.sft.warmup_steps,
            max_length=MAX_LENGTH,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        ),  # fmt: skip
        train_dataset=Dataset.from_list([{"messages": m} for m in data["train"]["messages"]]),
        processing_class=data["tokenizer"],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[timer],
    )
    trainer.train()
    matmul_dtype = "bfloat16" if trainer.args.bf16 else "float32"
    return trainer, timer, matmul_dtype


def train_ours(base: str, data: dict, steps: int, batch: int):
    """Our training stage's own code path (the SFT recipe's `train`, `assets/recipes/sft.py`) with the cpu preset."""
    from assets.recipes.sft import train as train_sft
    from resources.models import ModelLoader

    settings = training_settings(steps, batch)
    timer = step_timer()
    train = data["train"][["messages", "tools", "n_tokens"]].reset_index(drop=True)
    run = train_sft(settings, base, train, ModelLoader(), Path(tempfile.mkdtemp()), None, timer)
    return run.trainer, timer, "bfloat16" if run.trainer.args.bf16 else "float32"


def run_side(side: str, base: str, steps: int, batch: int) -> dict:
    """One side trained and scored, in this process: one pass over the first steps x batch train
    examples, so both sides train on exactly the same examples (in their own batch order)."""
    from assets.model_evaluation import eval_loss

    data = examples(base)
    data["train"] = data["train"].iloc[: steps * batch]
    trainer, timer, matmul_dtype = (train_plain_trl if side == "trl" else train_ours)(base, data, steps, batch)
    seconds = timer.ended - timer.started
    tokens = int(trainer._total_train_tokens)
    model = trainer.model.eval()
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    held_out = data["eval"][["input_ids", "assistant_masks"]].to_dict("records")
    tokens_per_second = tokens / seconds
    return {
        "side": side,
        "source": data["source"],
        "examples_trained": steps * batch,
        "steps": steps,
        "non_pad_tokens": tokens,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens_per_second, 1),
        "eval_loss": round(eval_loss(model, data["tokenizer"], held_out, batch_size=8), 4),
        "matmul_dtype": matmul_dtype,
        "mfu": round(4 * params * tokens_per_second / matmul_peak(matmul_dtype), 4),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def one_generate_per_prompt(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The naive way: one greedy `model.generate` call per prompt."""
    import torch

    answers = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def generation_speed(base: str) -> dict:
    """model_evaluation's batched generation, as the cpu preset sets it, vs one `generate` call per
    prompt, on the same prompts and model; counts the answers that differ."""
    from assets.domain.chat import prompt_text
    from assets.model_evaluation import generate, generation_budget
    from resources.models import ModelLoader

    data = examples(base)
    loader = ModelLoader()
    model, tokenizer = loader.load_model(base).eval(), loader.load_tokenizer(base)
    conversations = list(data["eval"]["messages"])
    prompts = [prompt_text(tokenizer, m) for m in conversations]
    preset = yaml.safe_load(CPU_PRESET.read_text())["evaluation"]
    budget = generation_budget(tokenizer, [m[-1]["content"] for m in conversations], preset["max_new_tokens_cap"])
    started = time.perf_counter()
    naive = one_generate_per_prompt(model, tokenizer, prompts, budget)
    naive_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batched, _, _ = generate(model, tokenizer, prompts, budget, batch_size=preset["generation_batch_size"])
    batched_seconds = time.perf_counter() - started
    return {
        "prompts": len(prompts),
        "max_new_tokens": budget,
        "batch_size": preset["generation_batch_size"],
        "naive_seconds": round(naive_seconds, 1),
        "batched_seconds": round(batched_seconds, 1),
        "answers_that_differ": sum(a != b for a, b in zip(naive, batched)),
    }


# The allocator settings the Makefile exports for the project's processes (ours); plain TRL runs the
# way a user starts it, without them.
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def in_subprocess(args: list[str], plain: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not (plain and k in ALLOCATOR_ENV)}
    out = subprocess.run([sys.executable, "-m", "tests.bench.train", *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"tests.bench.train {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepared_base(folder: Path) -> str:
    from assets.domain.chat import ready_for_chat
    from resources.models import ModelLoader

    if not (folder / "config.json").is_file():
        ModelLoader().materialize_base(folder, prepare=ready_for_chat)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per side")
    parser.add_argument("--batch", type=int, default=8, help="examples per step, both sides")
    parser.add_argument("--side", choices=["trl", "ours", "generation"], help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "generation":
        print(json.dumps(generation_speed(args.base)))
        return 0
    if args.side:
        print(json.dumps(run_side(args.side, args.base, args.steps, args.batch)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = prepared_base(Path(tmp) / "base")
        common = ["--base", base, "--steps", str(args.steps), "--batch", str(args.batch)]
        results = {}
        for side in ("trl", "ours", "generation"):
            results[side] = in_subprocess(["--side", side, *common], plain=side == "trl")
            print(json.dumps(results[side]), flush=True)
    trl, ours, gen = results["trl"], results["ours"], results["generation"]
    print(
        f"train_speedup_vs_trl={ours['tokens_per_second'] / trl['tokens_per_second']:.2f} "
        f"eval_loss_ratio={ours['eval_loss'] / trl['eval_loss']:.3f} "
        f"mfu_ours={ours['mfu']:.3f} mfu_trl={trl['mfu']:.3f} "
        f"eval_speedup_vs_naive={gen['naive_seconds'] / gen['batched_seconds']:.2f} "
        f"(answers that differ: {gen['answers_that_differ']}/{gen['prompts']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
