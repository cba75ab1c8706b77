"""Warm start: what a retrain that continues from the champion trains on, and what it records.

    training:
      start_from: champion     # continue from the version holding alias champion
      replay_fraction: 0.25    # a quarter of the examples from drops the champion already learnt

A retrain from the champion learns the drops it has not seen (`new`), plus a replay share of the ones
it has (`old`), so it rehearses what it knew instead of paying again for every drop to date; the
replay rows are chosen by a hash of their example id and the seed, so the choice is stable as rows
are reordered or more drops arrive. The registered version names the version it grew from (its
parent) in a version tag, the lineage and the model card.
"""

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rows are frames; importing this module (values.py does) loads no pandas
    import pandas as pd

# The version tag naming the version a model was trained from (absent: trained from the base model).
PARENT_VERSION_TAG = "parent_version"


@dataclass(frozen=True)
class Parent:
    """The registered version a retrain continues from, and how."""

    version: str
    run_id: str
    drops: tuple[str, ...]
    """The drops the parent was trained on (its `data.drops` tag)."""
    weights: str
    """The folder training starts from: the parent's adapter (`continues_adapter`) or its merged weights."""
    continues_adapter: bool
    """True: the parent's adapter, on this base model, trains on; False: a new adapter on its merged weights."""


@dataclass(frozen=True)
class WarmStart:
    """What a retrain started from and learnt from: the lineage's record of the warm start."""

    parent: str | None
    """The parent version, or None when the training started from the base model."""
    how: str
    """How it started, in words ('continued version 3's adapter', 'from the base model: no champion yet')."""
    new_rows: int = 0
    """Train rows of drops the parent had not learnt from."""
    replay_rows: int = 0
    """Rows of the parent's drops replayed beside them."""
    old_rows: int = 0
    """Rows of the parent's drops in the train split, the replay's pool."""

    def metadata(self) -> dict:
        return {
            "start_from": self.how,
            **({"parent_version": self.parent} if self.parent else {}),
            **({"new_rows": self.new_rows, "replay_rows": self.replay_rows} if self.parent else {}),
        }


def replay_count(new_rows: int, old_rows: int, fraction: float) -> int:
    """How many old rows make `fraction` of the examples beside `new_rows` new ones (at most all of them)."""
    if new_rows == 0 or fraction <= 0:
        return 0
    return min(old_rows, round(new_rows * fraction / (1 - fraction)))


def replay_order(example_ids: "pd.Series", seed: int) -> "pd.Series":
    """A stable random rank per example: its id hashed with the seed (never its row position)."""
    return example_ids.map(lambda i: hashlib.sha256(f"{seed}\x1f{i}".encode()).hexdigest())


def with_replay(train: "pd.DataFrame", parent_drops: tuple[str, ...], fraction: float, seed: int):
    """The rows a retrain from a parent trains on: the rows of drops the parent did not learn from,
    plus `replay_count` rows of those it did, chosen by `replay_order`. When every row is of the
    parent's drops (nothing new landed), the whole train split trains again. Returns the rows (new
    first, then the replay) and the counts (new, replayed, old)."""
    old = train["drop"].isin(parent_drops)
    new_rows, old_rows = train[~old], train[old]
    if new_rows.empty:
        return train, (0, 0, len(old_rows))
    k = replay_count(len(new_rows), len(old_rows), fraction)
    replay = old_rows.assign(_order=replay_order(old_rows["example_id"], seed)).sort_values("_order").head(k)
    import pandas as pd

    rows = pd.concat([new_rows, replay.drop(columns="_order")], ignore_index=True)
    return rows, (len(new_rows), k, len(old_rows))
