"""The order in which training sees its examples when `training.group_by_length` is on.

Batches pad to their longest example, so batching examples of similar length saves the compute spent
on padding (about half of every batch on real data such as Dolly, BENCHMARKS.md). transformers'
`LengthGroupedSampler` does the grouping, but runs the batches of each group from longest to
shortest, so the order of training follows length. `LengthGroupedBatches` groups the same way, then
shuffles the batches, so their order says nothing about length. (Grouping still makes batches less
varied: on the sample tickets that alone cost exact match, 0.56 -> 0.44 with either sampler, which is
why training groups only data whose random batches hold much padding: `with_length_grouping`.)

The trainer subclass is built on first use so that importing this module imports neither TRL nor torch.
"""

import random
from collections.abc import Iterator, Sequence
from functools import cache

# How many batches' worth of examples are sorted together: more means less padding, fewer means more
# variety in which examples share a batch. transformers' sampler sorts 50 batches' worth.
GROUP_BATCHES = 50


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Every index of `lengths` once, in consecutive runs of `batch_size` of similar length, the runs
    in random order: shuffle, sort each group of GROUP_BATCHES batches by length, cut into batches,
    shuffle the batches. The one short batch (when the count does not divide) comes last, so that
    every batch boundary stays where the data loader cuts."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        members = sorted(order[start : start + group], key=lengths.__getitem__)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    rng.shuffle(full)
    return [i for batch in full + short for i in batch]


class LengthGroupedBatches:
    """A sampler for the trainer's data loader: `length_grouped_order`, a new order each epoch, the
    same order again for the same seed and epoch (so a resumed training skips exactly the batches its
    first attempt trained on). Every process of a distributed training computes the same order and
    takes its own share of the batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch))


@cache
def sft_trainer_class():
    """TRL's SFTTrainer, with `LengthGroupedBatches` as its sampler when the training groups by length
    (`train_sampling_strategy='group_by_length'`); otherwise exactly SFTTrainer."""
    from trl import SFTTrainer

    class SFTTrainerWithLengthGroups(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return LengthGroupedBatches(lengths, self.args.per_device_train_batch_size, self.args.seed)

    return SFTTrainerWithLengthGroups
