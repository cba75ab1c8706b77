"""How training batches its examples: by length (`training.sft.group_by_length`) and by tokens
(`training.max_batch_tokens`); and the length-sorted, token-bounded batches evaluation scores in.

Batches pad to their longest example, so batching examples of similar length saves the compute spent
on padding (about half of every batch on real data such as Dolly, BENCHMARKS.md). transformers'
`LengthGroupedSampler` does the grouping, but runs the batches of each group from longest to
shortest, so the order of training follows length. `LengthGroupedBatches` groups the same way, then
shuffles the batches, so their order says nothing about length. (Grouping still makes batches less
varied: on the sample tickets that alone cost exact match, 0.56 -> 0.44 with either sampler, which is
why training groups only data whose random batches hold much padding: `grouping_pays`.)

A batch of a fixed number of rows costs what its longest row costs, times the rows: one 1,500-token
Dolly row makes a batch of 8 as costly (and as large in memory) as 8 such rows. Batches bounded by
tokens (`TokenBoundedBatches`) hold as many examples as fit both caps, the rows and the padded tokens
(rows x longest): many short examples, few long ones, one alone when it is longer than the budget.
SFT and DPO (`BatchOrder`, mixed into TRL's trainers) use them only where the budget binds (some
batch of full rows would exceed it); elsewhere their batches are exactly those of rows alone.
Evaluation scores in `length_sorted_batches`.

The trainer subclasses are built on first use so that importing this module imports neither TRL nor torch.
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


def bounded_batches(order: Sequence[int], lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """`order` cut into consecutive batches, each as long as both caps allow: at most `max_rows`
    indices, and their count times the longest one's length at most `max_tokens` (0: rows alone).
    An index longer than `max_tokens` is a batch of its own."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        widest = max(longest, lengths[i])
        if batch and (len(batch) == max_rows or (max_tokens and (len(batch) + 1) * widest > max_tokens)):
            batches.append(batch)
            batch, widest = [], lengths[i]
        batch.append(i)
        longest = widest
    if batch:
        batches.append(batch)
    return batches


def length_sorted_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Every index of `lengths` once, shortest first, cut by both caps (`bounded_batches`): the least
    padding, for work whose result does not depend on the order (scoring)."""
    return bounded_batches(sorted(range(len(lengths)), key=lengths.__getitem__), lengths, max_rows, max_tokens)


def token_bounded_pass(
    lengths: Sequence[int], max_rows: int, max_tokens: int, seed: int, grouped: bool
) -> list[list[int]]:
    """One pass over every index of `lengths` in batches bounded by both caps (`bounded_batches`).
    Grouped: like `length_grouped_order` (shuffle, sort each group of GROUP_BATCHES x max_rows
    examples by length, cut, shuffle the batches), so a batch's rows are of similar length and the
    order of batches says nothing about length. Not grouped: a random order, cut as it comes."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not grouped:
        return bounded_batches(order, lengths, max_rows, max_tokens)
    group = max_rows * GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        members = sorted(order[start : start + group], key=lengths.__getitem__)
        batches += bounded_batches(members, lengths, max_rows, max_tokens)
    rng.shuffle(batches)
    return batches


class TokenBoundedBatches:
    """A batch sampler for the trainer's data loader (lists of indices): `token_bounded_pass` after
    `token_bounded_pass` (seeds seed, seed + 1, ...), every example once per pass.

    The Trainer counts an epoch as a fixed number of batches (`len`, read once), and a resumed training
    skips that many per epoch already trained; but passes differ by a few batches, since how many rows
    fit depends on which examples meet. So epoch e is batches e x N to (e + 1) x N of the passes laid
    end to end, N the first pass's count: every epoch has N batches, and the same seed and epoch give
    the same batches again (a resumed training skips exactly those its first attempt trained on).
    Under torchrun accelerate deals whole batches to the processes in turn, each computing the same
    batches, so each device's batch stays within the budget. It has no `batch_size` attribute, which
    is how accelerate knows its batches vary in size."""

    def __init__(self, lengths: Sequence[int], max_rows: int, max_tokens: int, seed: int, grouped: bool):
        self.lengths, self.max_rows, self.max_tokens = list(lengths), max_rows, max_tokens
        self.seed, self.grouped = seed, grouped
        self.epoch = 0
        self.per_epoch = len(self.one_pass(0))

    def one_pass(self, index: int) -> list[list[int]]:
        return token_bounded_pass(self.lengths, self.max_rows, self.max_tokens, self.seed + index, self.grouped)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(self.epoch))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch: positions epoch x N to (epoch + 1) x N of the passes end to end."""
        start, stop = epoch * self.per_epoch, (epoch + 1) * self.per_epoch
        batches: list[list[int]] = []
        seen, index = 0, 0
        while seen < stop:
            one = self.one_pass(index)
            batches += one[max(start - seen, 0) : stop - seen]
            seen, index = seen + len(one), index + 1
        return batches


def random_batch_padding(lengths: Sequence[int], max_rows: int, max_tokens: int, seed: int) -> float:
    """The share of padding in one random pass over examples of these lengths, cut into batches as
    training would cut them without grouping (both caps: `token_bounded_pass`), each batch padded to
    its longest example. A long example the token budget puts in a batch of its own pads nothing."""
    batches = token_bounded_pass(lengths, max_rows, max_tokens, seed, grouped=False)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0


def grouping_pays(lengths: Sequence[int], max_rows: int, max_tokens: int, seed: int, min_padding: float) -> bool:
    """Whether batches of similar length pay for these examples: random batches (of at most `max_rows`
    rows and `max_tokens` padded tokens) would be more than `min_padding` padding."""
    return random_batch_padding(lengths, max_rows, max_tokens, seed) > min_padding


def budget_binds(lengths: Sequence[int], max_rows: int, max_tokens: int) -> bool:
    """Whether a batch of `max_rows` examples could exceed `max_tokens` (0: no token cap): only then
    do batches bounded by tokens differ from batches of rows alone."""
    return bool(max_tokens and lengths) and max_rows * max(lengths) > max_tokens


class BatchOrder:
    """What a TRL trainer class mixes in to batch as this module says: `TokenBoundedBatches` where the
    token budget (the constructor's `max_batch_tokens`) binds; otherwise `LengthGroupedBatches` as its
    sampler when the training groups by length (`train_sampling_strategy='group_by_length'`), or
    exactly the trainer's own batches. Validation batches (SFT's validation slice) are bounded by the same
    budget where it binds, shortest first. `example_lengths` says how wide each example makes its batch."""

    def __init__(self, *args, max_batch_tokens: int = 0, **kwargs):
        self.max_batch_tokens = max_batch_tokens
        self.batch_order = None  # the sampler of ours in use, if any: told each epoch (_run_epoch)
        super().__init__(*args, **kwargs)

    def example_lengths(self, dataset) -> list[int] | None:
        """Each example's padded width in a batch, from the tokenized train dataset (None: unknown)."""
        raise NotImplementedError

    def get_train_dataloader(self):
        lengths, rows = self.example_lengths(self.train_dataset), self.args.per_device_train_batch_size
        if lengths is None or not budget_binds(lengths, rows, self.max_batch_tokens):
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        args = self.args
        grouped = args.train_sampling_strategy == "group_by_length"
        self.batch_order = TokenBoundedBatches(lengths, rows, self.max_batch_tokens, args.seed, grouped)
        # What Trainer._get_dataloader builds, with a batch sampler in place of batch_size and sampler.
        loader = DataLoader(
            self._remove_unused_columns(self.train_dataset, description="Training"),
            batch_sampler=self.batch_order,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)

    def get_eval_dataloader(self, eval_dataset=None):
        """The validation examples (SFT's validation slice), in `length_sorted_batches` of at most
        per_device_eval_batch_size rows and max_batch_tokens padded tokens where the budget binds (the
        same batches at every validation, so their losses compare); otherwise the trainer's own."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str) or dataset is None:
            return super().get_eval_dataloader(eval_dataset)
        lengths, rows = self.example_lengths(dataset), self.args.eval_batch_size
        if lengths is None or not budget_binds(lengths, rows, self.max_batch_tokens):
            return super().get_eval_dataloader(eval_dataset)
        from torch.utils.data import DataLoader

        args = self.args
        loader = DataLoader(
            self._remove_unused_columns(dataset, description="Evaluation"),
            batch_sampler=length_sorted_batches(lengths, rows, self.max_batch_tokens),
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = self.example_lengths(dataset)
        if self.args.train_sampling_strategy != "group_by_length" or lengths is None:
            return super()._get_train_sampler(train_dataset)
        self.batch_order = LengthGroupedBatches(lengths, self.args.per_device_train_batch_size, self.args.seed)
        return self.batch_order

    def _run_epoch(self, *args, epoch, **kwargs):
        # accelerate hands the epoch on to our sampler only through some of its wrappers (not under
        # torchrun once a resumed training skips batches); without it a resumed epoch past the first
        # would replay the first epoch's order.
        if self.batch_order is not None:
            self.batch_order.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)


def columns(dataset) -> tuple[str, ...]:
    return tuple(getattr(dataset, "column_names", None) or ())


@cache
def sft_trainer_class():
    """TRL's SFTTrainer with `BatchOrder`: an example is as wide as its tokens."""
    from trl import SFTTrainer

    class SFTTrainerWithBatchOrder(BatchOrder, SFTTrainer):
        def example_lengths(self, dataset) -> list[int] | None:
            return [len(ids) for ids in dataset["input_ids"]] if "input_ids" in columns(dataset) else None

    return SFTTrainerWithBatchOrder


@cache
def dpo_trainer_class():
    """TRL's DPOTrainer with `BatchOrder`: a pair is two rows of its batch, prompt + chosen and
    prompt + rejected, each padded to the batch's longest, so a pair is twice as wide as its prompt
    and longer reply. TRL takes DPO's loss as the mean over each batch's pairs, so a step of fewer,
    longer pairs weighs as much as one of more, shorter ones (DPO has no gradient accumulation; under
    torchrun each process takes whole batches, as SFT's do)."""
    from trl import DPOTrainer

    class DPOTrainerWithBatchOrder(BatchOrder, DPOTrainer):
        def example_lengths(self, dataset) -> list[int] | None:
            if not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(columns(dataset)):
                return None
            pairs = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
            return [2 * (len(p) + max(len(c), len(r))) for p, c, r in pairs]

    return DPOTrainerWithBatchOrder
