"""Batches bounded by tokens (`training.max_batch_tokens`, `evaluation.max_batch_tokens`): a batch holds
as many examples as fit both the rows and the padded tokens, never more; every example once per pass;
the same batches again for the same seed and epoch; and the trainer, resumed or not, and evaluation
scoring batch that way on rows of mixed lengths."""

import random

import pandas as pd
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from safetensors.torch import load_file

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.training import TrainingConfig
from assets.model_evaluation import eval_loss, reply_logprobs
from assets.recipes import dpo, sft
from assets.recipes.job import RecipeJob, report
from resources.batch_order import (
    LengthGroupedBatches,
    TokenBoundedBatches,
    bounded_batches,
    budget_binds,
    length_sorted_batches,
    token_bounded_pass,
)
from resources.models import ModelLoader

ROWS, TOKENS = 8, 1024


def within_caps(batch: list[int], lengths: list[int], rows: int, tokens: int) -> bool:
    return len(batch) <= rows and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= tokens)


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    """Mostly short examples, a few long, some longer than the whole budget."""
    rng = random.Random(0)
    return [
        rng.choice([rng.randint(20, 120)] * 8 + [rng.randint(300, 900), rng.randint(1100, 1500)]) for _ in range(500)
    ]


@pytest.mark.parametrize("grouped", [True, False])
def test_a_pass_holds_every_example_once_in_batches_within_both_caps(lengths, grouped):
    batches = token_bounded_pass(lengths, ROWS, TOKENS, seed=1, grouped=grouped)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(within_caps(b, lengths, ROWS, TOKENS) for b in batches)
    assert all(len(b) == 1 for b in batches if max(lengths[i] for i in b) > TOKENS), "longer than the budget: alone"
    assert token_bounded_pass(lengths, ROWS, TOKENS, seed=1, grouped=grouped) == batches
    assert token_bounded_pass(lengths, ROWS, TOKENS, seed=2, grouped=grouped) != batches


def test_batches_are_as_full_as_the_caps_allow():
    """Cut in order, a batch ends only where the next example would break a cap: short examples fill
    their batch's rows, an example of 900 tokens has it to itself."""
    lengths = [40] * 20 + [900, 40, 40, 900, 300, 300, 300, 300]
    batches = bounded_batches(range(len(lengths)), lengths, ROWS, TOKENS)
    assert [len(b) for b in batches] == [8, 8, 4, 1, 2, 1, 3, 1]
    assert bounded_batches(range(len(lengths)), lengths, ROWS, 0) == [
        list(range(i, min(i + ROWS, len(lengths)))) for i in range(0, len(lengths), ROWS)
    ], "0: rows alone"


def test_grouped_batches_use_the_budget_better_than_random_ones(lengths):
    """Grouped by length, long examples share batches with long ones, so fewer batches (steps) carry
    the same examples, and less of each batch is padding."""
    grouped = token_bounded_pass(lengths, ROWS, TOKENS, seed=0, grouped=True)
    random_order = token_bounded_pass(lengths, ROWS, TOKENS, seed=0, grouped=False)
    assert len(grouped) < 0.8 * len(random_order)

    def padding(batches):
        return 1 - sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.1 < padding(random_order)


def test_every_epoch_has_the_same_count_and_replays_for_the_same_seed(lengths):
    """Passes differ in how many batches they hold; the Trainer wants the same number every epoch.
    Epochs are cut from the passes laid end to end: epoch 0 is the first pass, every example once per
    pass, and a fresh sampler set to an epoch (a resumed training) gives the same batches."""
    passes = [token_bounded_pass(lengths, ROWS, TOKENS, seed=5 + p, grouped=False) for p in range(4)]
    assert len({len(p) for p in passes}) > 1, "the data should make passes of different sizes"
    sampler = TokenBoundedBatches(lengths, ROWS, TOKENS, seed=5, grouped=False)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert len(epochs[-1]) == len(sampler) == len(passes[0])
    assert epochs[0] == passes[0]
    stream = [b for p in passes for b in p]
    assert [b for e in epochs for b in e] == stream[: 3 * len(sampler)]
    resumed = TokenBoundedBatches(lengths, ROWS, TOKENS, seed=5, grouped=False)
    resumed.set_epoch(2)
    assert list(resumed) == epochs[2]


def test_under_two_processes_each_takes_whole_batches(lengths):
    """accelerate's sharding under torchrun: each process takes every other batch, whole (no
    `batch_size` on the sampler lets batches vary in size), so each device's batch keeps the budget."""
    sampler = TokenBoundedBatches(lengths, ROWS, TOKENS, seed=0, grouped=True)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert all(len(s) == len(BatchSamplerShard(sampler, num_processes=2)) for s in shards)
    batches = list(sampler)
    assert shards[0][: len(batches[::2])] == batches[::2] and shards[1][: len(batches[1::2])] == batches[1::2]
    assert {i for s in shards for b in s for i in b} == set(range(len(lengths)))


def test_the_budget_binds_only_where_full_batches_would_exceed_it():
    assert not budget_binds([100, 256, 80], 8, 2048), "the sample's tickets at the cpu preset: rows alone"
    assert budget_binds([100, 257], 8, 2048)
    assert not budget_binds([5000], 8, 0)


def conversation(words: int, tag: int) -> list[dict]:
    return [{"role": "user", "content": f"ticket {tag}"}, {"role": "assistant", "content": "word " * words}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return ModelLoader().load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def mixed_rows(tokenizer) -> pd.DataFrame:
    """28 conversations of about 40-60 tokens and 4 of about 900, shuffled."""
    rng = random.Random(0)
    words = [rng.randint(5, 25) for _ in range(28)] + [870, 875, 880, 885]
    rng.shuffle(words)
    messages = [conversation(w, i) for i, w in enumerate(words)]
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    lengths = [len(training_tokens(tokenizer, m, None, template)["input_ids"]) for m in messages]
    assert max(lengths) < 1000 and min(lengths) < 100
    return pd.DataFrame({"messages": messages, "tools": [None] * len(words), "n_tokens": lengths})


def record_batches(model, shapes: list) -> None:
    """From now on, the (rows, width) of every batch `model` runs on is appended to `shapes`."""
    forward = model.forward

    def recorded(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recorded


def recording_batches(shapes: list):
    """A trainer callback: `record_batches` on the model it trains."""
    from transformers import TrainerCallback

    class Batches(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record_batches(model, shapes)

    return Batches()


def quick(sft: dict | None = None, dpo: dict | None = None, **overrides) -> TrainingConfig:
    values = {"max_batch_tokens": TOKENS, "precision": "fp32", "save_steps": 0, "logging_steps": 1}
    sft_values = {
        "max_steps": 6,
        "per_device_train_batch_size": ROWS,
        "warmup_steps": 0,
        "learning_rate": 1e-2,
        "group_by_length_min_padding": 0.0,
    }
    return TrainingConfig(**{**values, **overrides}, sft={**sft_values, **(sft or {})}, dpo=dpo or {})


def saved_to(starts_from, folder) -> RecipeJob:
    """A job whose outputs go under `folder` (what `report` reads of it)."""
    return RecipeJob(
        training={}, starts_from=str(starts_from), checkpoint_dir=str(folder), resume=None, resumed_from_step=None,
        out_dir=str(folder / "out"), state_home=str(folder / "state"), models={}, mlflow={}, mlflow_run_id="",
    )  # fmt: skip


def test_training_batches_are_bounded_by_tokens(tiny_model_dir, mixed_rows, tmp_path):
    """The real SFT trainer on rows of mixed lengths: the short rows train 8 at a time, each ~900-token
    row alone, never over the budget; the tokens its job reports are those it trained on."""
    shapes: list[tuple[int, int]] = []
    run = sft.train(
        quick(sft={"max_steps": 8}), str(tiny_model_dir), mixed_rows, ModelLoader(), tmp_path, None,
        recording_batches(shapes),
    )  # fmt: skip
    assert isinstance(run.trainer.batch_order, TokenBoundedBatches)
    assert len(shapes) == 8 and all(rows == 1 or rows * width <= TOKENS for rows, width in shapes), shapes
    assert sorted(rows for rows, width in shapes if width > 500) == [1, 1, 1, 1]
    assert max(rows for rows, _ in shapes) == ROWS
    assert sum(rows for rows, _ in shapes) == len(mixed_rows), "one pass: every row once"
    reported = report(run, saved_to(tiny_model_dir, tmp_path / "job"), ModelLoader())
    assert reported.tokens == int(mixed_rows["n_tokens"].sum())
    assert [s for s, _ in run.curve()] == list(range(1, 9)) == [s for s, _ in reported.loss_curve]


def test_rows_alone_where_the_budget_never_binds(tiny_model_dir, mixed_rows, tmp_path):
    """The same rows under a budget that every batch of 8 fits: the batches of rows alone, as before."""
    run = sft.train(
        quick(sft={"max_steps": 1}, max_batch_tokens=8 * 1000), str(tiny_model_dir), mixed_rows, ModelLoader(),
        tmp_path, None,
    )  # fmt: skip
    assert isinstance(run.trainer.batch_order, LengthGroupedBatches)


def test_the_loss_is_the_mean_over_the_steps_assistant_tokens(tiny_model_dir, mixed_rows, tmp_path):
    """Two batches of different sizes per step (gradient accumulation): TRL divides the summed loss by
    the step's assistant tokens, so the logged first loss is the initial model's mean over those
    tokens, not the mean of the two batches' means."""
    run = sft.train(
        quick(sft={"max_steps": 1, "gradient_accumulation_steps": 2}), str(tiny_model_dir), mixed_rows,
        ModelLoader(), tmp_path, None,
    )  # fmt: skip
    first, second = run.trainer.batch_order.epoch_batches(0)[:2]
    tokenizer = run.tokenizer
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    examples = [training_tokens(tokenizer, mixed_rows["messages"][i], None, template) for i in first + second]
    base = ModelLoader().load_model(str(tiny_model_dir)).eval()
    token_mean = eval_loss(base, tokenizer, examples, batch_size=1)
    batch_means = [
        eval_loss(base, tokenizer, examples[: len(first)], 1),
        eval_loss(base, tokenizer, examples[len(first) :], 1),
    ]
    logged = run.curve()[0][1]
    assert logged == pytest.approx(token_mean, rel=1e-5)
    assert abs(sum(batch_means) / 2 - token_mean) > 1e-3 * token_mean, "the data should tell the two means apart"


def test_a_resumed_training_trains_the_same_batches(tiny_model_dir, mixed_rows, tmp_path):
    """Random order (batches cut as examples come, so passes differ in size), a checkpoint inside the
    second epoch: resumed from it, training sees the same batches as the uninterrupted run and ends
    with the same adapter."""
    epoch = TokenBoundedBatches(mixed_rows["n_tokens"].tolist(), ROWS, TOKENS, TrainingConfig().seed, grouped=False)
    steps, checkpoint = len(epoch) + 4, len(epoch) + 2
    config = quick(sft={"max_steps": steps, "group_by_length": False}, save_steps=checkpoint, keep_checkpoints=5)
    whole: list[tuple[int, int]] = []
    sft.train(
        config, str(tiny_model_dir), mixed_rows, ModelLoader(), tmp_path / "whole", None, recording_batches(whole)
    )
    resumed: list[tuple[int, int]] = []
    sft.train(
        config, str(tiny_model_dir), mixed_rows, ModelLoader(), tmp_path / "resumed",
        tmp_path / "whole" / f"checkpoint-{checkpoint}", recording_batches(resumed),
    )  # fmt: skip
    assert len(whole) == steps and resumed == whole[checkpoint:]
    a = load_file(tmp_path / "whole" / f"checkpoint-{steps}" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / f"checkpoint-{steps}" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_scoring_batches_are_bounded_by_tokens_and_score_the_same(tiny_model_dir, mixed_rows, tokenizer):
    """Eval loss and reply log-probabilities in length-sorted batches within both caps give what
    scoring one example at a time gives, each reply's in its own place."""
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    examples = [training_tokens(tokenizer, m, None, template) for m in mixed_rows["messages"]]
    model = ModelLoader().load_model(str(tiny_model_dir)).eval()
    shapes: list[tuple[int, int]] = []
    record_batches(model, shapes)
    batched = eval_loss(model, tokenizer, examples, batch_size=ROWS, max_batch_tokens=TOKENS)
    assert all(rows == 1 or rows * width <= TOKENS for rows, width in shapes) and max(r for r, _ in shapes) == ROWS
    assert len(shapes) == len(length_sorted_batches([len(e["input_ids"]) for e in examples], ROWS, TOKENS))
    assert batched == pytest.approx(eval_loss(model, tokenizer, examples, batch_size=1), rel=1e-5)
    replies = [(e["input_ids"][:10], e["input_ids"][10:]) for e in examples]
    shapes.clear()
    sums = reply_logprobs(model, tokenizer.pad_token_id, replies, batch_size=ROWS, max_batch_tokens=TOKENS)
    assert all(rows == 1 or rows * width <= TOKENS for rows, width in shapes)
    one_by_one = reply_logprobs(model, tokenizer.pad_token_id, replies, batch_size=1)
    assert sums == pytest.approx(one_by_one, rel=1e-4)


def test_dpo_batches_are_bounded_by_tokens(tiny_model_dir, tmp_path):
    """DPO on pairs of mixed lengths: a pair is two rows (prompt + chosen, prompt + rejected), so four
    short pairs share a batch of 8 rows and a pair of ~450-token replies has its batch to itself."""
    words = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 430, 440]
    random.Random(0).shuffle(words)
    pairs = pd.DataFrame(
        {
            "messages": [[{"role": "user", "content": f"ticket {i}"}] for i in range(len(words))],
            "chosen": ["word " * w for w in words],
            "rejected": ["note " * w for w in words],
        }
    )
    shapes: list[tuple[int, int]] = []
    config = quick(dpo={"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3})
    run = dpo.train(config, str(tiny_model_dir), pairs, ModelLoader(), tmp_path, None, recording_batches(shapes))
    assert isinstance(run.trainer.batch_order, TokenBoundedBatches) and run.trainer.state.global_step == 4
    assert shapes and all(rows == 2 or rows * width <= TOKENS for rows, width in shapes), shapes
    assert all(rows == 2 for rows, width in shapes if width > 400), "a long pair alone"
    assert max(rows for rows, _ in shapes) == 8, "four short pairs together"
