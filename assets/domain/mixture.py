"""Mixing weights: how often each train row is trained on per pass of the data, by the drop, source
file or record format it came from (what LLaMA-Factory's `interleave_probs`, Axolotl's per-dataset
`weight` and TRL's `DatasetMixtureConfig` do for whole datasets, here as rules over a row's source).

    split:
      mixing:
        - {drop: "2026-*", weight: 2.0}                  # fnmatch patterns, case-sensitive
        - {source_file: "*support*.jsonl", weight: 0.5}  # the file as stored: '<drop>/<name>'
        - {format: sharegpt, weight: 1.5}                # openai_chat, sharegpt, dolly, preference, ...

A row's weight is the product of the weights of the rules it matches (1.0 when it matches none): the
expected number of times it is trained on per pass of the data. 2.0 trains every row of its group
twice, 0.5 about half of them once, 0 none of them: a weight-0 row stays a train row of the split (in
the train set hash, never moved to eval) and is simply not sampled. `instruction_pairs` decides (its
`PairsSummary` keeps the rules, their counts over the train split and their hash); the training stages
apply them (`mixed`), deterministically from `training.seed`.
"""

import hashlib
import json
import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from assets.domain.training import refuse_unknown

# The pair columns a rule may select rows by.
SELECTORS = ("drop", "source_file", "format")
# What tells rows apart when each draws its extra copy: its prompt's hash and its place in the data, so
# the draw depends on the row, never on the order of the frame.
ROW_KEY_COLUMNS = ("example_id", "drop", "source_file", "source_line")
# Hex digits of a sha256 read as a uniform draw in [0, 1), and naming a set of rules.
DRAW_HEX_CHARS = 16
MIXING_HASH_CHARS = 16


class MixingRule(dg.Config):
    """One rule of `split.mixing`: a pattern on one of the row's source columns, and the weight that
    the rows it matches are multiplied by."""

    drop: str | None = Field(default=None, description="fnmatch pattern on the row's drop, e.g. '2026-*'.")
    source_file: str | None = Field(
        default=None,
        description="fnmatch pattern on the row's file as stored, '<drop>/<name>' ('*' also matches '/'), "
        "e.g. '*support*.jsonl'.",
    )
    format: str | None = Field(
        default=None, description="fnmatch pattern on the record format of the row's file, e.g. 'sharegpt'."
    )
    weight: float = Field(
        ge=0.0,
        allow_inf_nan=False,
        description="Expected times each matching row is trained on per pass (2.0: twice; 0.5: half of them "
        "once; 0: not trained on, though still in the train split). A row matching several rules gets "
        "their product.",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        return refuse_unknown(cls, values, "split.mixing")

    @model_validator(mode="after")
    def _one_selector(self) -> "MixingRule":
        named = [k for k in SELECTORS if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError(
                f"a split.mixing rule selects rows by exactly one of {', '.join(SELECTORS)} (it names "
                f"{', '.join(named) or 'none'}); write one rule per selector, e.g. "
                "{drop: '2026-*', weight: 2.0}: a row matching several rules gets the product of their weights."
            )
        return self

    @property
    def selector(self) -> tuple[str, str]:
        """The column the rule reads and its pattern."""
        column = next(k for k in SELECTORS if getattr(self, k) is not None)
        return column, getattr(self, column)

    @property
    def label(self) -> str:
        column, pattern = self.selector
        return f"{column}={pattern}"


def as_rules(rules: Sequence[MixingRule | dict]) -> list[MixingRule]:
    """Typed rules from `MixingRule`s or the plain dicts a `PairsSummary` keeps."""
    return [r if isinstance(r, MixingRule) else MixingRule(**r) for r in rules]


def given(rules: Sequence[MixingRule | dict]) -> tuple[dict, ...]:
    """The rules as given, as plain values (selector and weight): what the summary and MLflow keep."""
    return tuple(r.model_dump(exclude_none=True) for r in as_rules(rules))


def mixing_hash(rules: Sequence[MixingRule | dict]) -> str:
    """Names a set of rules ('' for none), whatever their order: the weights are a product."""
    if not rules:
        return ""
    canonical = sorted(json.dumps(r, sort_keys=True) for r in given(rules))
    return hashlib.sha256("\n".join(canonical).encode()).hexdigest()[:MIXING_HASH_CHARS]


def matches(train: pd.DataFrame, rule: MixingRule) -> pd.Series:
    """Which rows `rule` selects (a row without the column's value matches no pattern)."""
    column, pattern = rule.selector
    if column not in train:
        return pd.Series(False, index=train.index)
    return train[column].map(lambda value: isinstance(value, str) and fnmatchcase(value, pattern)).astype(bool)


def row_weights(train: pd.DataFrame, rules: Sequence[MixingRule | dict]) -> pd.Series:
    """Each row's weight: the product of the weights of the rules it matches, 1.0 when none."""
    weights = np.ones(len(train))
    for rule in as_rules(rules):
        weights[matches(train, rule).to_numpy()] *= rule.weight
    return pd.Series(weights, index=train.index)


def draw(seed: int, key: str) -> float:
    """A uniform number in [0, 1) for one row, a pure function of the seed and the row's key."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()
    return int(digest[:DRAW_HEX_CHARS], 16) / 16**DRAW_HEX_CHARS


def row_keys(train: pd.DataFrame) -> list[str]:
    """What each row's draw is keyed by (`ROW_KEY_COLUMNS`; a column the frame lacks counts as None)."""
    columns = [train[c] if c in train else [None] * len(train) for c in ROW_KEY_COLUMNS]
    return ["\x1f".join(map(str, values)) for values in zip(*columns)]


def copies(train: pd.DataFrame, rules: Sequence[MixingRule | dict], seed: int) -> list[int]:
    """How many times each row is trained on per pass: the whole part of its weight, and one more with
    the probability of its fractional part, drawn per row from `seed`."""
    weights = row_weights(train, rules)
    return [math.floor(w) + (draw(seed, key) < w - math.floor(w)) for w, key in zip(weights, row_keys(train))]


def mixed(train: pd.DataFrame, rules: Sequence[MixingRule | dict], seed: int) -> pd.DataFrame:
    """`train` with each row repeated as often as its weight says (`copies`): what a training stage
    trains on. The same rows, seed and rules give the same rows in any order; no rules, `train` itself.
    Fails when the rules leave none of its rows to train on."""
    if not rules or train.empty:
        return train
    repeated = train.iloc[np.repeat(np.arange(len(train)), copies(train, rules, seed))].reset_index(drop=True)
    if repeated.empty:
        shown = "; ".join(f"{r.label}: weight {r.weight:g}" for r in as_rules(rules))
        raise ValueError(
            f"split.mixing samples none of the {len(train)} train rows ({shown}): every row's weight is 0, "
            "or so small that no row was drawn. Raise the weights, or leave out the rule that zeroes every row."
        )
    return repeated


def mixture_table(train: pd.DataFrame, rules: Sequence[MixingRule | dict]) -> list[dict]:
    """Per rule, the train rows it matches, its weight and the rows expected to train per pass from
    them (their weights summed: the product over every rule they match); then the whole train split."""
    weights = row_weights(train, rules).to_numpy()
    table = []
    for rule in as_rules(rules):
        selected = matches(train, rule).to_numpy()
        expected = round(float(weights[selected].sum()), 1)
        table.append(
            {"rule": rule.label, "rows": int(selected.sum()), "weight": rule.weight, "expected_rows": expected}
        )
    total = round(float(weights.sum()), 1)
    return [*table, {"rule": "all train rows", "rows": len(train), "weight": None, "expected_rows": total}]


def mixture_markdown(table: Sequence[dict]) -> str:
    """`mixture_table` as markdown (the product of the weights on the total row)."""
    lines = ["| rule | train rows matched | weight | expected rows trained per pass |", "|---|---|---|---|"]
    for row in table:
        weight = "product" if row["weight"] is None else f"{row['weight']:g}"
        lines.append(f"| {row['rule']} | {row['rows']} | {weight} | {row['expected_rows']:g} |")
    return "\n".join(lines)
