"""Benchmark: batches bounded by tokens beside batches of rows alone, on Dolly rows at their full length.

    .venv/bin/python -m tests.bench.token_batches            (--examples 96 --memory-cap-gb 14)

Both sides are our SFT stage's own code path (the SFT recipe's `train`, assets/recipes/sft.py) with the `cpu`
preset, from the bundled SmolLM2-135M, making one pass over the same examples: Dolly records
(../shared/data/dolly/, required: the point is its long rows) of up to 2,048 tokens, what the cpu
preset's validation now lets through, a random `--examples` of them (seed 0). The preset groups them by
length (their random batches are mostly padding), so the sides differ only in `max_batch_tokens`:

- **rows**: 0, batches of 8 rows whatever their length (the behaviour before the setting existed);
- **tokens**: the preset's 2,048 padded tokens per batch (8 rows at most), so long rows train in
  smaller batches, and more steps carry the same examples.

Each side runs in a process of its own (its own peak RSS), with the Makefile's allocator settings and
a cap on its data memory (`--memory-cap-gb`, RLIMIT_DATA), so a side that needs more fails with an
allocation error instead of pushing the shared machine out of memory; it then reports the step it
reached and the batch it failed on. Prints one JSON line per side, then a summary line.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_TOKENS = 2048
# The Makefile exports these for every project process (BENCHMARKS.md, the levers one by one).
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
SIDES = {"rows": 0, "tokens": None}  # max_batch_tokens per side; None: the preset's


def dolly_rows(base: str, count: int):
    """A random `count` (seed 0) of the Dolly conversations of at most MAX_TOKENS tokens, as our
    training renders them."""
    import pandas as pd
    from transformers import AutoTokenizer

    from assets.domain.chat import training_chat_template, training_tokens
    from tests.bench.train import DOLLY, source_conversations

    if not DOLLY.is_file():
        sys.exit(f"{DOLLY} is not there: this benchmark measures Dolly's long rows and has no stand-in for them.")
    tokenizer = AutoTokenizer.from_pretrained(base)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    rows = []
    for messages in source_conversations()[1]:
        n_tokens = len(training_tokens(tokenizer, messages, None, template)["input_ids"])
        if n_tokens <= MAX_TOKENS:
            rows.append({"messages": messages, "tools": None, "n_tokens": n_tokens})
    random.Random(0).shuffle(rows)
    return pd.DataFrame(rows[:count])


def batch_recorder(shapes: list, times: list):
    """A callback recording each batch's (rows, width) as the model runs it, and when each step ends."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            forward = model.forward

            def recorded(*a, **k):
                shapes.append(tuple(k["input_ids"].shape))
                return forward(*a, **k)

            model.forward = recorded

        def on_step_begin(self, args, state, control, **kwargs):
            times.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kwargs):
            times.append(("end", time.perf_counter()))

    return Recorder()


def planned_batches(config, lengths: list[int]) -> list[list[int]]:
    """The first epoch's batches as the trainer will cut them for these settings."""
    from resources.batch_order import TokenBoundedBatches, budget_binds, length_grouped_order

    rows, budget = config.sft.per_device_train_batch_size, config.max_batch_tokens
    if budget_binds(lengths, rows, budget):
        return list(TokenBoundedBatches(lengths, rows, budget, config.seed, config.sft.group_by_length))
    assert config.sft.group_by_length, "Dolly's random batches are mostly padding: the preset groups them"
    order = length_grouped_order(lengths, rows, config.seed)
    return [order[i : i + rows] for i in range(0, len(order), rows)]


def run_side(side: str, base: str, examples: int) -> dict:
    """One pass over the examples with this side's max_batch_tokens: the figures, or how far it got."""
    from assets.domain.training import TrainingConfig
    from assets.recipes.sft import train as train_sft
    from assets.recipes.sft import with_length_grouping
    from pipelines.presets import load_preset
    from resources.models import ModelLoader

    train = dolly_rows(base, examples)
    lengths = [int(n) for n in train["n_tokens"]]
    preset = {**load_preset("cpu")["training"], "save_steps": 0, "method": "sft", "logging_steps": 1}
    if SIDES[side] is not None:
        preset["max_batch_tokens"] = SIDES[side]
    config = with_length_grouping(TrainingConfig(**preset), lengths)
    plan = planned_batches(config, lengths)
    config = config.with_sft(max_steps=len(plan))
    shapes: list[tuple[int, int]] = []
    times: list[tuple[str, float]] = []
    failed = None
    callback = batch_recorder(shapes, times)
    try:
        run = train_sft(config, base, train, ModelLoader(), Path(tempfile.mkdtemp()), None, callback)
        steps_done = run.trainer.state.global_step
    except (RuntimeError, MemoryError) as error:  # an allocation over the cap
        failed, steps_done = f"{type(error).__name__}: {str(error)[:160]}", sum(kind == "end" for kind, _ in times)
    ended = max((t for _, t in times), default=0.0)
    seconds = ended - next((t for kind, t in times if kind == "begin"), ended)
    padded = [len(b) * max(lengths[i] for i in b) for b in plan]
    return {
        "side": side,
        "max_batch_tokens": config.max_batch_tokens,
        "group_by_length": config.sft.group_by_length,
        "examples": len(lengths),
        "non_pad_tokens": sum(lengths),
        "longest_example": max(lengths),
        "steps": len(plan),
        "padded_tokens": sum(padded),
        "largest_batch": max(padded),
        "steps_done": steps_done,
        "batches_run_match_plan": [list(s) for s in shapes[:steps_done]]
        == [[len(b), max(lengths[i] for i in b)] for b in plan[:steps_done]],
        "failed": failed,
        "failed_on_batch": list(shapes[steps_done]) if failed and len(shapes) > steps_done else None,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps_done, 1), 2),
        "non_pad_tokens_per_second": round(sum(lengths) / seconds, 1) if steps_done == len(plan) else None,
    }


def capped(gigabytes: float):
    """In the child, before it starts: its data memory (heap and anonymous maps) capped."""
    limit = int(gigabytes * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def in_subprocess(side: str, base: str, examples: int, cap_gb: float) -> dict:
    """One side in a process of its own, under the memory cap; its figures with its own peak RSS
    (from wait4, so a side that crashed still has one)."""
    command = [sys.executable, "-m", "tests.bench.token_batches", "--side", side, "--base", base]
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [*command, "--examples", str(examples)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, **ALLOCATOR},
            preexec_fn=capped(cap_gb),
        )
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        tail = errors.read().strip().splitlines()[-1:] or [""]
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else {"side": side}
    if child.returncode:
        result["failed"] = f"exited with {child.returncode}: {tail[0][:200]}"
    return {**result, "max_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=96, help="Dolly rows, one pass each side")
    parser.add_argument("--memory-cap-gb", type=float, default=14.0, help="data memory per side (RLIMIT_DATA)")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.base, args.examples)))
        return 0
    from tests.bench.train import prepared_base

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = prepared_base(Path(tmp) / "base")
        for side in SIDES:
            results[side] = in_subprocess(side, base, args.examples, args.memory_cap_gb)
            print(json.dumps(results[side]), flush=True)
    print(
        f"memory_cap_gb={args.memory_cap_gb} "
        + " | ".join(
            f"{r['side']}: steps={r.get('steps_done')}/{r.get('steps')} seconds={r.get('train_seconds')} "
            f"max_rss_mb={r['max_rss_mb']} largest_batch={r.get('largest_batch')}"
            + (f" FAILED ({r['failed']})" if r.get("failed") else "")
            for r in results.values()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
