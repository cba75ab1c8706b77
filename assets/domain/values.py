"""What each stage hands the next: small frozen values with named fields, defined once.

The data stages hand over `RecordSet`s (rows on disk, `resources/records.py`) whose `summary` is one
of the summaries below; the model stages hand over `TrainedModel` (SFT) -> `TrainedModel` (the
candidate, after DPO when there was one) -> `Evaluation` -> `RegisteredVersion` -> `ChampionVersion`.
The Dagster IO manager pickles these values, the gate, the model card and `pipelines/run.py` read
them by attribute, so a reader can follow a value by its type from the asset that makes it to every
asset that uses it.
"""

from dataclasses import dataclass, field
from typing import Any

from assets.domain.warm_start import WarmStart

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
    category: str | None = None
    """The field its rows name their category in (`ingest.category_field`), when the file has it."""


@dataclass(frozen=True)
class RawSummary:
    """The summary of a `raw_records` partition: each file (by its name in the landing) as read."""

    files: dict[str, FileSummary]


@dataclass(frozen=True)
class PairsSummary:
    """The summary of `instruction_pairs`, computed while its rows were written: counts, which drops
    and validations the rows came from, and order-independent hashes naming the train and eval sets
    (each holds its preference pairs too), and what the length budget did to the drops' rows."""

    train_rows: int
    eval_rows: int
    preference_pairs: int
    excluded_duplicates: int
    drops: tuple[str, ...]
    validations: dict[str, list[str]]
    """drop -> the Great Expectations result files its rows passed"""
    train_set_hash: str
    eval_set_hash: str
    rows_truncated: int = 0
    """Rows of those drops cut to fit validation's max_tokens (they train, cut)."""
    rows_left_out: int = 0
    """Rows of those drops left out for length: too long even when cut (among their rejected rows)."""
    mixing: tuple[dict, ...] = ()
    """The mixing rules as given (`split.mixing`, assets/domain/mixture.py), each a selector and its
    weight: how often the training stages sample each train row. Empty: every train row once."""
    mixing_table: tuple[dict, ...] = ()
    """Per rule, the train rows it matches and the rows expected to train per pass from them; then the
    whole train split (`mixture.mixture_table`). Empty without rules."""
    mixing_hash: str = ""
    """Names the rules ('' without rules): beside `train_set_hash`, what a model trained on this split learned from."""

    @property
    def train_data_key(self) -> str:
        """What a training setup names its data by: the train set hash, and the mixing rules' hash when
        there are rules (the same rows sampled otherwise are other training data)."""
        return f"{self.train_set_hash}+{self.mixing_hash}" if self.mixing_hash else self.train_set_hash


# ---- model stages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceStage:
    """What the DPO stage of `preference_tuned_model` did, on top of the model it started from."""

    pairs: int
    """Preference pairs in the train split."""
    steps: int
    beta: float
    learning_rate: float
    train_loss: float
    """Mean DPO loss over the stage (log 2 = 0.693 at the start: the policy equals its reference)."""
    train_seconds: float
    reward_accuracy: float | None = None
    """Share of the last logged batch's pairs whose chosen reply the policy preferred over the reference."""
    loss_curve: tuple[tuple[int, float], ...] = ()
    """(step, DPO loss) as logged."""


@dataclass(frozen=True)
class RewardStage:
    """What the GRPO stage of `preference_tuned_model` did, on top of the model it started from."""

    prompts: int
    """Prompts in the train split (each answered num_generations times per step it is drawn)."""
    steps: int
    num_generations: int
    beta: float
    learning_rate: float
    rewards: tuple[str, ...]
    """The reward functions, by name."""
    train_seconds: float
    reward_curve: tuple[tuple[int, float], ...] = ()
    """(step, mean reward of the step's sampled answers) as logged."""
    kl: float | None = None
    """The last logged KL divergence from the starting weights (None without the KL penalty)."""

    @property
    def first_reward(self) -> float | None:
        return self.reward_curve[0][1] if self.reward_curve else None

    @property
    def last_reward(self) -> float | None:
        return self.reward_curve[-1][1] if self.reward_curve else None


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and how it was made: what `fine_tuned_model` (the SFT stage) made, and what
    `preference_tuned_model` hands on as the candidate (that SFT model, or DPO on top of it, with
    `preference` set). The fields before `loss_curve` describe the SFT stage."""

    adapter_dir: str | None
    """The PEFT adapter's folder; None for adapter 'full' (every weight trained: see merged_dir)."""
    merged_dir: str
    loss_curve_png: str
    preset: str
    settings: dict[str, Any]
    """The training settings as run (`TrainingConfig.flat()`: without `preset`, a section's as `sft.max_steps`)."""
    device: str
    max_length: int
    train_examples: int
    steps: int
    train_loss: float
    train_seconds: float
    loss_curve: tuple[tuple[int, float], ...] = ()
    """(step, training loss) as logged."""
    mlflow_run_id: str | None = None
    """The MLflow run the training reported to as it trained; registration completes that run."""
    resumed_from_step: int | None = None
    """The checkpoint step a killed training was resumed from, or None when it ran uninterrupted."""
    method: str = "sft"
    """How the model was trained: 'sft', 'dpo' or 'sft+dpo' ('auto' resolved). In the SFT stage's
    value of a 'dpo' run no SFT ran (steps 0; merged_dir is the base model)."""
    adapter: str = "lora"
    """lora, dora, rslora, qlora (an adapter in adapter_dir) or full (no adapter)."""
    adapter_base_dir: str = ""
    """The folder whose weights the adapter applies to: the base model, or for 'sft+dpo' the SFT
    stage's merged model. Evaluation puts the adapter on the loaded base when this is the base;
    otherwise it loads merged_dir."""
    preference: PreferenceStage | None = None
    """The DPO stage's figures, when there was one."""
    reinforcement: "RewardStage | None" = None
    """The GRPO stage's figures, when there was one."""
    setup_key: str = ""
    """The SFT stage's training setup (its checkpoint folder's name): what a second stage starting from
    this model names its starting weights by, so that its own checkpoints resume only on the same SFT model."""
    validation_examples: int = 0
    """Train-split examples the SFT stage held back as its validation slice (0: no validation;
    `train_examples` counts those it trained on)."""
    validation_curve: tuple[tuple[int, float], ...] = ()
    """(step, loss on the validation slice) at each validation."""
    best_step: int | None = None
    """The SFT step whose checkpoint is this model: the lowest validation loss (None without validation)."""
    best_validation_loss: float | None = None
    stopped_early: bool = False
    """Whether early stopping ended the SFT stage before its max_steps (at `steps`)."""
    sweep_point: dict[str, Any] = field(default_factory=dict)
    """The sweep's point this SFT model was chosen from (setting path -> value), which the second stage trains
    with too; empty without a sweep."""
    warm_start: WarmStart | None = None
    """What the training started from (`training.start_from`): the parent version it continued and the rows
    it replayed, or the base model; None in values made before warm starts."""

    @classmethod
    def base(cls, base_model: str, preset: str, settings: dict[str, Any], device: str, method: str) -> "TrainedModel":
        """The SFT stage's value when the method has none ('dpo', 'grpo'): no SFT ran, no figures; the
        base model is what the second stage starts from. `settings`: `TrainingConfig.flat()`."""
        return cls(
            adapter_dir=None, merged_dir=base_model, loss_curve_png="", preset=preset, settings=settings,
            device=device, max_length=0, train_examples=0, steps=0, train_loss=0.0, train_seconds=0.0,
            method=method, adapter=settings.get("adapter", "lora"), adapter_base_dir=base_model,
        )  # fmt: skip

    def adapter_applies_to(self, base_model: str) -> bool:
        """Whether adapter_dir is an adapter for the weights in `base_model` (a value made before
        adapter_base_dir existed had its adapter on the base)."""
        return self.adapter_dir is not None and self.adapter_base_dir in ("", base_model)


@dataclass(frozen=True)
class ChampionScores:
    """The current champion's metrics on the same eval set: from its run, or re-scored here."""

    version: str
    rescored: bool
    metrics: dict[str, float]
    items: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Its per-item scores (`Evaluation.items`), the gate's paired comparison; empty for a version
    registered before they were kept, which evaluation then re-scores."""


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
    method: str = "sft"
    """How the tuned model was trained (`TrainedModel.method`); with DPO in it, the gate also
    compares preference accuracy."""
    preference_pairs: int = 0
    """Held-out preference pairs scored for `preference_accuracy` and `preference_margin` (0: none)."""
    items: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    """Per model ('base', 'tuned'), each metric per item, in one order for every model: the task metrics
    per eval prompt, `preference_accuracy` (1 or 0) and `preference_margin` per held-out pair,
    `probe_perplexity` per probe text. What the gate's paired intervals are taken on."""
    slices: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    """Per slice field (`metrics.SLICE_FIELDS`: drop, source_file, category), each eval prompt's value, in
    the order of the per-prompt scores in `items` (None: the row has no category). What the per-slice
    results (`metrics.slice_rows`) group the items by."""
    pair_slices: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    """The same per held-out preference pair, in the order of `preference_accuracy` in `items`."""
    suites: dict[str, float | None] = field(default_factory=dict)
    """Per regression suite scored (its metric's key in `items` and the metrics: `suite.<name>.<metric>`),
    how far the gate lets the candidate fall below the base and the champion on it (None: not gated)."""
    judge: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """The judge's verdicts per model the candidate was compared with ('base', 'champion'): per eval prompt,
    1 (the candidate's answer won in both orders), 0.5 (tie, or one win each), 0 (lost both). Empty when
    the judge is off."""

    @property
    def model_items(self) -> dict[str, dict[str, tuple[float, ...]]]:
        """`items`, and the champion's per-item scores as 'champion' when it has them."""
        return self.items | ({"champion": self.champion.items} if self.champion and self.champion.items else {})

    @property
    def trained_on_preferences(self) -> bool:
        return "dpo" in self.method

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
    """The paired difference's mean (candidate minus what it is compared with), or the measured value."""
    threshold: str
    passed: bool
    low: float | None = None
    high: float | None = None
    """The difference's interval at the gate's confidence (None: a value without one)."""
    items: int = 0
    """How many prompts, pairs or texts the difference is taken over."""
    unit: str = "prompts"
    note: str = ""
    """Why the items could not show what the criterion asks, when they could not."""
    key: str = ""
    """Its name in MLflow metrics (`gate.<key>.difference`, `.low`, `.high`)."""


@dataclass(frozen=True)
class GateVerdict:
    """Whether the challenger may become champion, why in words, and each criterion."""

    passed: bool
    reason: str
    criteria: tuple[Criterion, ...]
    confidence: float = 0.95
    """The confidence of the criteria's intervals (`gate.confidence`)."""


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
