"""What each stage hands the next: small frozen values with named fields, defined once.

The data stages hand over `RecordSet`s (rows on disk, `resources/records.py`) whose `summary` is one
of the summaries below; the model stages hand over `TrainedModel` -> `Evaluation` ->
`RegisteredVersion` -> `ChampionVersion`. The Dagster IO manager pickles these values, the gate,
the model card and `pipelines/run.py` read them by attribute, so a reader can follow a value by its
type from the asset that makes it to every asset that uses it.
"""

from dataclasses import dataclass, field
from typing import Any

# How many example rows a check or a table shows (the rest are in the dataset).
EXAMPLE_ROWS = 10
# How many characters of a Dagster run id name a run in folder names, run names and card titles.
SHORT_RUN_ID = 8


def short_run_id(run_id: str) -> str:
    return run_id[:SHORT_RUN_ID]


# ---- data stages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSummary:
    """One raw file of a drop: its rows, detected (or configured) format and column mapping."""

    rows: int
    format: str
    mapping: dict[str, str] | None = None


@dataclass(frozen=True)
class RawSummary:
    """The summary of a `raw_records` partition: each file (by its name in the landing) as read."""

    files: dict[str, FileSummary]


@dataclass(frozen=True)
class PairsSummary:
    """The summary of `instruction_pairs`, computed while its rows were written: counts, which drops
    and validations the rows came from, and order-independent hashes naming the train and eval sets."""

    train_rows: int
    eval_rows: int
    preference_pairs: int
    excluded_duplicates: int
    drops: tuple[str, ...]
    validations: dict[str, list[str]]
    """drop -> the Great Expectations result files its rows passed"""
    train_set_hash: str
    eval_set_hash: str


# ---- model stages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """What `fine_tuned_model` made: the adapter and merged folders, and how they were trained."""

    adapter_dir: str
    merged_dir: str
    loss_curve_png: str
    preset: str
    settings: dict[str, Any]
    """The training stage's settings as run (without `preset`)."""
    device: str
    max_length: int
    train_examples: int
    steps: int
    train_loss: float
    train_seconds: float
    loss_curve: tuple[tuple[int, float], ...] = ()
    """(step, training loss) as logged."""


@dataclass(frozen=True)
class ChampionScores:
    """The current champion's metrics on the same eval set: from its run, or re-scored here."""

    version: str
    rescored: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class Evaluation:
    """What `model_evaluation` measured: base, tuned (the challenger) and champion on the same eval
    examples with the same decoding, and what identifies that comparison."""

    primary_metric: str
    task_type: str
    """'json' when every expected answer is JSON, else 'open_ended'."""
    base: dict[str, float]
    tuned: dict[str, float]
    champion: ChampionScores | None
    forgetting_pct: float
    eval_examples: int
    eval_set_hash: str
    settings_hash: str
    samples: tuple[dict[str, str], ...] = ()
    """Per eval example: prompt, expected, base, tuned (and champion when re-scored)."""
    generation_tokens_per_second: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 0
    """The generation budget every model had (configured, or derived from the references)."""
    generations_cut: dict[str, int] = field(default_factory=dict)
    """Per model (base, tuned, champion when re-scored): generations that hit max_new_tokens."""

    @property
    def base_primary(self) -> float:
        return self.base[self.primary_metric]

    @property
    def tuned_primary(self) -> float:
        return self.tuned[self.primary_metric]


@dataclass(frozen=True)
class Criterion:
    """One rule of the promotion gate, its value beside its threshold."""

    criterion: str
    value: float
    threshold: str
    passed: bool


@dataclass(frozen=True)
class GateVerdict:
    """Whether the challenger may become champion, why in words, and each criterion."""

    passed: bool
    reason: str
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class RegisteredVersion:
    """What `registered_model` made: a version of the registered model, its run, and the gate's verdict."""

    model_name: str
    version: str
    mlflow_run_id: str
    gate: GateVerdict
    primary_metric: str
    base_value: float
    tuned_value: float

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class ChampionVersion:
    """What `champion_model` did: the version now holding alias `champion`, and the one before."""

    model_name: str
    version: str
    previous: str | None
