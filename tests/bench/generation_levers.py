"""The evaluation's generation levers one by one, on the bench's 32 held-out Dolly prompts, the bundled
SmolLM2-135M and the new-token budget the cpu preset gives them (256):

    .venv/bin/python -m tests.bench.generation_levers

Times, in one process, one greedy `generate` call per prompt (the yardstick), one left-padded
`generate` call per batch (the evaluation before resources/generation.py), then `greedy_answers`
with one lever off at a time, and counts the answers that differ from the yardstick's.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def padded_batches(model, tokenizer, prompts: list[str], budget: int, batch_size: int) -> list[str]:
    """One left-padded `generate` call per batch of `batch_size` prompts in their given order: every
    prompt padded to the batch's longest, every row decoded until the batch's longest answer ends."""
    import torch

    tokenizer.padding_side = "left"
    answers = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


def growing_cache(model, rows, pad_id: int, capacity: int):
    """The joined prefill in a DynamicCache (grown by concatenation each step) instead of a StaticCache."""
    from transformers import DynamicCache

    from resources.generation import read_rows

    return DynamicCache(ddp_cache_data=read_rows(model, rows, pad_id, max(len(r) for r in rows)), config=model.config)


def main() -> int:
    import yaml

    import resources.generation as generation
    from assets.domain.chat import prompt_text
    from assets.model_evaluation import generate, generation_budget
    from resources.models import ModelLoader
    from tests.bench.train import CPU_PRESET, examples, one_generate_per_prompt, prepared_base

    base = prepared_base(Path(os.environ.get("BENCH_BASE", "/tmp/ft-bench-base")))
    model, tokenizer = ModelLoader().load_model(base).eval(), ModelLoader().load_tokenizer(base)
    conversations = list(examples(base)["eval"]["messages"])
    prompts = [prompt_text(tokenizer, m) for m in conversations]
    cap = yaml.safe_load(CPU_PRESET.read_text())["evaluation"]["max_new_tokens_cap"]
    budget = generation_budget(tokenizer, [m[-1]["content"] for m in conversations], cap)
    print(f"{len(prompts)} prompts, budget {budget} new tokens", flush=True)

    def timed(name: str, answer, size: int) -> None:
        started = time.perf_counter()
        answers = answer(model, tokenizer, prompts, budget, size)
        seconds = time.perf_counter() - started
        differ = sum(a != b for a, b in zip(answers, naive))
        print(f"{name:<58} {seconds:6.1f} s  {naive_seconds / seconds:5.2f}x  differ {differ}", flush=True)

    def answers(*args):
        return generate(*args)[0]

    started = time.perf_counter()
    naive = one_generate_per_prompt(model, tokenizer, prompts, budget)
    naive_seconds = time.perf_counter() - started
    print(f"{'one generate call per prompt (yardstick)':<58} {naive_seconds:6.1f} s", flush=True)
    for size in (16, 32):
        timed(f"one padded generate per batch of {size}", padded_batches, size)
    for size in (16, 32):
        timed(f"greedy_answers, batch {size}", answers, size)
    segment, joined = generation.DECODE_SEGMENT, generation.prefilled_cache
    generation.prefilled_cache = growing_cache
    timed("greedy_answers, batch 32, DynamicCache", answers, 32)
    generation.prefilled_cache, generation.DECODE_SEGMENT = joined, budget
    timed("greedy_answers, batch 32, no row leaves before the end", answers, 32)
    generation.DECODE_SEGMENT, generation.PREFILL_LENGTH_RATIO = segment, float("inf")
    timed("greedy_answers, batch 32, prompts prefilled padded", answers, 32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
