"""The validation slice of SFT: train-split examples held back from training, on which the SFT recipe
measures the loss every `training.sft.eval_steps` to stop early and keep the best checkpoint.

    train = with_validation(train, training)    # adds the boolean column `validation`
    fit, held = train[~train["validation"]], train[train["validation"]]

It is carved from the train split, never from the eval split: the eval split stays unseen by every
decision of training, for the promotion gate. Which examples are held back is a pure function of each
example's `example_id` (the hash of its normalized prompt) and the seed, never of row order: the same
examples are held back on every run and however the rows are ordered, and rows of the same prompt stay
on the same side (a prompt is never both trained on and validated on).
"""

import hashlib
from collections.abc import Iterable

import pandas as pd

from assets.domain.training import TrainingConfig

COLUMN = "validation"


def validation_score(example_id: str, seed: int) -> float:
    """Where `example_id` falls in [0, 1) for `seed`: held back when below the fraction. Salted apart from
    the train/eval split's hash, so that the slice is not the prompts nearest the eval split's cut."""
    digest = hashlib.sha256(f"validation\x1f{seed}\x1f{example_id}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def validation_rows(example_ids: Iterable[str], fraction: float, seed: int) -> list[bool]:
    """For each example (by its `example_id`), whether it is held back for validation: those whose
    `validation_score` is below `fraction`, about that share of the distinct prompts. With `fraction` > 0
    at least one prompt is held back and at least one trains (the lowest score, the highest); that needs
    at least two distinct prompts. 0: none."""
    ids = [str(i) for i in example_ids]
    if fraction <= 0:
        return [False] * len(ids)
    distinct = sorted(set(ids), key=lambda i: (validation_score(i, seed), i))
    if len(distinct) < 2:
        raise ValueError(
            f"training.sft.validation_fraction is {fraction}, but the train split holds {len(distinct)} distinct "
            "prompt(s): a validation slice needs at least 2 (one held back, one trained on). Add examples, or set "
            "training.sft.validation_fraction to 0."
        )
    held = sum(validation_score(i, seed) < fraction for i in distinct)
    held_back = set(distinct[: min(max(held, 1), len(distinct) - 1)])
    return [i in held_back for i in ids]


def with_validation(train: pd.DataFrame, training: TrainingConfig) -> pd.DataFrame:
    """The SFT examples with the boolean column `validation`: the rows held back
    (`training.sft.validation_fraction` of the prompts, `training.seed`); all False when it is 0."""
    fraction = training.sft.validation_fraction
    if fraction > 0 and "example_id" not in train:
        raise ValueError("A validation slice is chosen by example_id, and these examples have no such column.")
    ids = train["example_id"] if fraction > 0 else [""] * len(train)
    return train.assign(**{COLUMN: validation_rows(ids, fraction, training.seed)})


def split_validation(examples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows to train on, the validation rows) by the `validation` column (absent: every row trains)."""
    if COLUMN not in examples:
        return examples, examples.iloc[0:0]
    held = examples[COLUMN].astype(bool)
    return examples[~held].reset_index(drop=True), examples[held].reset_index(drop=True)
