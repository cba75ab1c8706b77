"""Length-grouped batches in random order (`training.group_by_length`): less padding, no length trend."""

import random
import statistics

import pandas as pd
import pytest

from assets.domain.training import TrainingConfig
from assets.recipes.sft import train, with_length_grouping
from resources.batch_order import (
    GROUP_BATCHES,
    LengthGroupedBatches,
    length_grouped_order,
    random_batch_padding,
)
from resources.models import ModelLoader


def padded_share(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def cut(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    rng = random.Random(0)
    return [rng.randint(10, 500) for _ in range(2 * 8 * GROUP_BATCHES + 5)]


def test_every_example_once_short_batch_last(lengths):
    order = length_grouped_order(lengths, batch_size=8, seed=1)
    assert sorted(order) == list(range(len(lengths)))
    batches = cut(order, 8)
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1) and len(batches[-1]) == 5


def test_batches_pad_far_less_than_random_ones(lengths):
    grouped = cut(length_grouped_order(lengths, batch_size=8, seed=1), 8)
    shuffled = list(range(len(lengths)))
    random.Random(1).shuffle(shuffled)
    assert padded_share(grouped, lengths) < 0.1 < 0.4 < padded_share(cut(shuffled, 8), lengths)


def test_batch_order_carries_no_length_trend(lengths):
    """transformers' LengthGroupedSampler runs each group longest first: here the longest batch of
    an epoch is anywhere, and batch length does not go with position."""
    batches = cut(length_grouped_order(lengths, batch_size=8, seed=3), 8)[:-1]
    longest = [max(lengths[i] for i in b) for b in batches]
    assert abs(statistics.correlation(range(len(longest)), longest)) < 0.3
    firsts = {cut(length_grouped_order(lengths, 8, seed), 8)[0][0] for seed in range(5)}
    assert len(firsts) == 5, "each seed starts elsewhere"


def test_same_seed_and_epoch_same_order_new_epoch_new_order(lengths):
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=42)
    first = list(sampler)
    assert list(sampler) == first and len(sampler) == len(lengths)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


def test_trainer_batches_by_length_when_grouping(tiny_model_dir, tmp_path):
    """The real SFT trainer, grouping on: its data loader uses these batches and pads less."""
    rng = random.Random(0)
    messages = [
        [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": "word " * rng.randint(1, 60)}]
        for i in range(48)
    ]
    tokenizer = ModelLoader().load_tokenizer(str(tiny_model_dir))
    rows = pd.DataFrame(
        {
            "messages": messages,
            "n_tokens": [len(tokenizer.apply_chat_template(m, return_dict=True)["input_ids"]) for m in messages],
        }
    )
    shares = {}
    for grouped in (False, True):
        config = TrainingConfig(
            precision="fp32",
            save_steps=0,
            sft={
                "max_steps": 1,
                "per_device_train_batch_size": 8,
                "group_by_length": grouped,
                "group_by_length_min_padding": 0.0,
            },
        )
        run = train(config, str(tiny_model_dir), rows, ModelLoader(), tmp_path / str(grouped), None)
        loader = run.trainer.get_train_dataloader()
        masks = [batch["attention_mask"] for batch in loader]
        shares[grouped] = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
        assert isinstance(run.trainer._get_train_sampler(), LengthGroupedBatches) == grouped
    assert shares[True] < shares[False] / 2, shares


def test_grouping_only_where_random_batches_hold_much_padding(lengths):
    """Uneven lengths (like Dolly): random batches are mostly padding, so they are grouped; even
    lengths (like the sample tickets, 77-117 tokens): a few percent, so grouping is not worth its
    less varied batches; and off stays off."""
    uneven, even = lengths, [77 + (i * 7) % 41 for i in range(400)]
    assert random_batch_padding(uneven, 8, 0, seed=0) > 0.4
    assert random_batch_padding(even, 8, 0, seed=0) < 0.15
    config = TrainingConfig(sft={"group_by_length": True, "group_by_length_min_padding": 0.25})
    assert with_length_grouping(config, uneven).sft.group_by_length
    assert not with_length_grouping(config, even).sft.group_by_length
    assert with_length_grouping(TrainingConfig(sft={"group_by_length_min_padding": 0.0}), even).sft.group_by_length
    assert not with_length_grouping(TrainingConfig(sft={"group_by_length": False}), uneven).sft.group_by_length
    assert with_length_grouping(config, uneven).sft.learning_rate == config.sft.learning_rate


def test_a_long_row_in_a_batch_of_its_own_does_not_turn_grouping_on():
    """One 2,048-token row among short tickets (the sample's cut log ticket): counted in 8-row random
    batches it would make a third of them padding and switch grouping on; the token budget puts it in
    a batch of its own, so the batches that train hold little padding and stay ungrouped."""
    tickets = [77 + (i * 7) % 41 for i in range(338)] + [2048]
    config = TrainingConfig(max_batch_tokens=2048, sft={"group_by_length": True, "group_by_length_min_padding": 0.25})
    assert random_batch_padding(tickets, 8, 0, seed=0) > 0.25
    assert random_batch_padding(tickets, 8, 2048, seed=0) < 0.15
    assert not with_length_grouping(config, tickets).sft.group_by_length
    assert with_length_grouping(config.model_copy(update={"max_batch_tokens": 0}), tickets).sft.group_by_length
