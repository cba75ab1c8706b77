"""Hyperparameter sweeps: the preset's `sweep` section, the points it names, and which point wins.

    sweep:
      strategy: grid               # every combination (refused over the budget); random: `budget` draws
      budget: 8                    # the most points a sweep trains
      select: validation_loss      # the point with the lowest; `maximize: true` for the highest
      parameters:                  # paths into the `training` settings
        sft.learning_rate: [0.0001, 0.00025, 0.0005]         # values to try
        lora_r: {low: 4, high: 32, log: true, count: 4}      # a range: `count` values for grid, drawn for random

Each point is the preset's `training` settings with the point's values put in (`apply`). The SFT stage
(`fine_tuned_model`) trains once per point, each point a Dagster step of its own, and hands the best
point's model to the next stage, which trains once. So a sweep covers what the SFT stage learns: the
shared settings and `sft.*`, not the second stage's (`dpo.*`, `grpo.*`) nor settings that change how a
training runs or reports rather than what it learns. With no parameters there is no sweep (the default).

`validation_loss` is the loss on the SFT stage's validation slice (`training.sft.validation_fraction`),
the same held-back examples for every point, at its best checkpoint: the fair comparison. `train_loss`
(mean over the training) and `final_loss` (the last logged step's) are what each point fitted, which a
higher learning rate always wins; they are for a sweep without validation, knowingly.
"""

import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from assets.domain.figures import shown, significant
from assets.domain.training import METHOD_SECTIONS, SftSettings, TrainingConfig, refuse_unknown, trains_sft
from assets.domain.values import TrainedModel

Selectable = Literal["validation_loss", "train_loss", "final_loss"]
# Settings no sweep changes, and why.
NOT_SWEPT = {
    "preset": "it names the preset",
    "method": "every point trains the SFT stage; the method after it is one for all points",
    "num_processes": "it changes how a point runs, not what it learns",
    "logging_steps": "it changes how a point reports, not what it learns",
    "save_steps": "it changes how a point checkpoints, not what it learns",
    "keep_checkpoints": "it changes how a point checkpoints, not what it learns",
}
# Significant digits of a value drawn from a range (readable step names, MLflow params and tables).
DRAWN_DIGITS = 3
# Draws a random sweep makes per point of its budget before it settles for fewer distinct points.
DRAWS_PER_POINT = 50


def sweepable() -> list[str]:
    """The setting paths a sweep may change: the shared training settings and the `sft` section's."""
    shared = [k for k in TrainingConfig.model_fields if k not in NOT_SWEPT and k not in METHOD_SECTIONS]
    return shared + [f"sft.{k}" for k in SftSettings.model_fields]


def refuse_unsweepable(paths) -> None:
    """A path a sweep cannot change is refused with the reason, or with the paths it can."""
    valid = sweepable()
    for path in paths:
        head = path.split(".")[0]
        if head in NOT_SWEPT:
            raise ValueError(f"sweep.parameters.{path}: a sweep does not change training.{path}: {NOT_SWEPT[head]}.")
        if head in METHOD_SECTIONS and head != "sft":
            raise ValueError(
                f"sweep.parameters.{path}: a sweep trains the SFT stage once per point and the {head} stage once, "
                "on the best point's model, so it sweeps what SFT learns: the shared settings and sft.*."
            )
        if path not in valid:
            raise ValueError(f"sweep.parameters.{path} is no training setting; a sweep may change: {', '.join(valid)}.")


def is_integer(path: str) -> bool:
    """Whether the setting at `path` holds a whole number (values drawn from a range are rounded)."""
    section, _, key = path.rpartition(".")
    return (SftSettings if section == "sft" else TrainingConfig).model_fields[key].annotation is int


class SweepParameter(dg.Config):
    """One swept setting: the values to try (a YAML list is short for `values`), or a range from `low` to `high`."""

    values: list[Any] = Field(default=[], description="The values to try, in order.")
    low: float | None = Field(default=None, description="A range's lowest value.")
    high: float | None = Field(default=None, description="A range's highest value.")
    log: bool = Field(default=False, description="Spread a range's values evenly on a log scale (learning rates).")
    count: int = Field(default=3, ge=2, description="strategy grid: how many values a range gives, both ends included.")

    @model_validator(mode="before")
    @classmethod
    def _list_is_values(cls, value: Any) -> Any:
        return {"values": value} if isinstance(value, list) else refuse_unknown(cls, value, "sweep.parameters.<path>")

    @model_validator(mode="after")
    def _values_or_range(self) -> "SweepParameter":
        if bool(self.values) == (self.low is not None or self.high is not None):
            raise ValueError("a swept setting is either a list of values or a range {low, high}, not both or neither")
        if not self.values and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"a range needs low below high (low {self.low}, high {self.high})")
        if self.log and not self.values and self.low <= 0:
            raise ValueError(f"a log range needs low above 0 (low {self.low})")
        return self


class SweepConfig(dg.ConfigurableResource):
    """The `sweep` section: the training settings to try, how points are picked, and which point wins.
    No parameters: no sweep, fine_tuned_model trains once."""

    parameters: dict[str, SweepParameter] = Field(
        default={},
        description="Per training setting path (`sft.learning_rate`, `lora_r`, `seed`, ...), its values or range.",
    )
    strategy: Literal["grid", "random"] = Field(
        default="grid",
        description="grid: every combination of the values (a range gives `count`); refused when that is more than "
        "the budget, rather than silently leaving combinations out. random: `budget` distinct draws, seeded by "
        "training.seed (the same points every run of the same settings).",
    )
    budget: int = Field(default=8, ge=1, description="The most points a sweep trains.")
    select: Selectable = Field(
        default="validation_loss",
        description="What picks the winner: validation_loss (needs training.sft.validation_fraction above 0), "
        "train_loss (mean over the training) or final_loss (the last logged step's).",
    )
    maximize: bool = Field(default=False, description="Pick the highest `select` instead of the lowest.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        refuse_unknown(cls, values, "sweep")
        if isinstance(values, dict):
            refuse_unsweepable(values.get("parameters") or {})
        return values


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its place, its step's name, its settings (path -> value), and the MLflow
    run its training run is a child of."""

    index: int
    key: str
    settings: dict[str, Any]
    parent_run: str = ""


@dataclass(frozen=True)
class PointResult:
    """What a point trained, and its figures by name (`point_metrics`)."""

    point: SweepPoint
    trained: TrainedModel
    metrics: dict[str, float]


def axis(parameter: SweepParameter, integer: bool) -> list:
    """The values a grid takes for one parameter: its list, or `count` values across its range."""
    if parameter.values:
        return list(dict.fromkeys(parameter.values))
    low, high, n = parameter.low, parameter.high, parameter.count
    if parameter.log:
        spread = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1)) for i in range(n)]
    else:
        spread = [low + i * (high - low) / (n - 1) for i in range(n)]
    return list(dict.fromkeys(round(v) if integer else significant(v, DRAWN_DIGITS) for v in spread))


def draw(parameter: SweepParameter, integer: bool, rng: random.Random):
    """One random value of a parameter: one of its values, or uniform over its range (log-uniform with log)."""
    if parameter.values:
        return rng.choice(parameter.values)
    low, high = parameter.low, parameter.high
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if parameter.log else rng.uniform(low, high)
    return round(value) if integer else significant(value, DRAWN_DIGITS)


def points(sweep: SweepConfig, seed: int) -> list[dict[str, Any]]:
    """The sweep's points, each a dict of setting path -> value: every combination (grid, refused over the
    budget), or up to `budget` distinct random draws seeded by `seed`; none without parameters."""
    if not sweep.parameters:
        return []
    integer = {path: is_integer(path) for path in sweep.parameters}
    if sweep.strategy == "grid":
        axes = {path: axis(p, integer[path]) for path, p in sweep.parameters.items()}
        grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
        if len(grid) > sweep.budget:
            sizes = " x ".join(str(len(v)) for v in axes.values())
            raise ValueError(
                f"sweep: the grid has {len(grid)} points ({sizes}) and sweep.budget is {sweep.budget}. Raise the "
                "budget, give fewer values, or use strategy random to train `budget` of them."
            )
        return grid
    rng, drawn = random.Random(seed), {}
    for _ in range(sweep.budget * DRAWS_PER_POINT):
        point = {path: draw(p, integer[path], rng) for path, p in sweep.parameters.items()}
        drawn.setdefault(point_key(point), point)
        if len(drawn) == sweep.budget:
            break
    return list(drawn.values())


def apply(training: TrainingConfig, point: dict[str, Any]) -> TrainingConfig:
    """`training` with the point's values put in (each checked as the setting's type)."""
    values = training.model_dump()
    for path, value in point.items():
        section, _, key = path.rpartition(".")
        (values[section] if section else values)[key] = value
    return TrainingConfig(**values)


def setting(training: TrainingConfig, path: str):
    section, _, key = path.rpartition(".")
    return getattr(getattr(training, section) if section else training, key)


def slug(value: Any) -> str:
    """A value as part of a step name: letters, digits and underscores (0.0001 -> 0_0001, 1e-05 -> 1em05)."""
    if isinstance(value, bool):
        return str(value).lower()
    text = f"{value:g}".replace("-", "m").replace("+", "") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "empty"


def point_key(point: dict[str, Any]) -> str:
    """A point's name as a Dagster mapping key: `sft_learning_rate_0_0001__lora_r_8`."""
    return "__".join(f"{path.replace('.', '_')}_{slug(value)}" for path, value in point.items())


def plan(sweep: SweepConfig, training: TrainingConfig) -> list[SweepPoint]:
    """The points to train, each checked against the settings: its values of the settings' types, its own
    step name, and what `select` needs (a validation slice for validation_loss; SFT in the method)."""
    planned = []
    for index, point in enumerate(points(sweep, training.seed)):
        try:
            config = apply(training, point)
        except (ValidationError, ValueError) as error:
            raise ValueError(f"sweep point {point}: these training settings are refused: {error}") from None
        typed = {path: setting(config, path) for path in point}  # as trained: "1e-4" in YAML is 0.0001
        planned.append(SweepPoint(index, point_key(typed), typed))
        if not trains_sft(config.method) and config.method != "auto":
            raise ValueError(f"sweep: a sweep trains the SFT stage, and training.method {config.method!r} has none.")
        if sweep.select == "validation_loss" and not config.sft.validation_fraction > 0:
            raise ValueError(
                f"sweep.select is validation_loss, and point {planned[-1].key} trains without a validation slice "
                "(training.sft.validation_fraction is 0). Set training.sft.validation_fraction (e.g. 0.1): every "
                "point is then measured on the same held-back train examples. Or select train_loss or final_loss, "
                "which favour whatever fits the training data fastest."
            )
    keys = [p.key for p in planned]
    if len(set(keys)) < len(keys):
        raise ValueError(f"sweep: two points share a step name ({', '.join(keys)}): make their values differ.")
    return planned


def point_metrics(trained: TrainedModel) -> dict[str, float]:
    """The figures a point can be selected by, those it has: validation_loss (at its best checkpoint),
    train_loss (mean over the training), final_loss (the last logged step's)."""
    metrics = {"train_loss": float(trained.train_loss)}
    if trained.loss_curve:
        metrics["final_loss"] = float(trained.loss_curve[-1][1])
    if getattr(trained, "best_validation_loss", None) is not None:
        metrics["validation_loss"] = float(trained.best_validation_loss)
    return metrics


def best(results: list[PointResult], select: str, maximize: bool = False) -> PointResult:
    """The point with the lowest `select` (highest with `maximize`); the earliest point on a tie. A point
    whose figure is missing or not finite (a diverged training) is never chosen."""
    scored = [r for r in results if math.isfinite(r.metrics.get(select, math.nan))]
    if not scored:
        have = sorted({m for r in results for m in r.metrics})
        raise ValueError(
            f"No sweep point reported a finite {select} (the points report: {', '.join(have) or 'nothing'}); "
            "nothing to choose. Check the points' training logs, or select another figure (sweep.select)."
        )
    pick = max if maximize else min
    return pick(sorted(scored, key=lambda r: r.point.index), key=lambda r: r.metrics[select])


def points_frame(results: list[PointResult], chosen: PointResult) -> pd.DataFrame:
    """One row per point: its name, settings, figures, steps, MLflow run, and whether it was chosen."""
    rows = []
    for r in sorted(results, key=lambda r: r.point.index):
        trained = r.trained
        rows.append({
            "#": r.point.index, "point": r.point.key, "chosen": r.point.key == chosen.point.key, **r.point.settings,
            **{m: shown(v) for m, v in sorted(r.metrics.items())}, "steps": trained.steps,
            "best_step": getattr(trained, "best_step", None), "stopped_early": getattr(trained, "stopped_early", False),
            "mlflow_run_id": trained.mlflow_run_id,
        })  # fmt: skip
    return pd.DataFrame(rows)


def points_markdown(results: list[PointResult], chosen: PointResult, select: str) -> str:
    """The points as a markdown table, the chosen one marked, sorted by `select` as it was ranked."""
    frame = points_frame(results, chosen).drop(columns=["mlflow_run_id"])
    frame["chosen"] = frame["chosen"].map({True: "**chosen**", False: ""})
    return frame.to_markdown(index=False)


def comparison_chart(results: list[PointResult], chosen: PointResult, select: str):
    """The points side by side, each in its own colour: its validation loss curve on one axes (its training
    loss when no point validated), and the figure it was selected by, on an axis zoomed to the points'
    values (a loss's differences are small beside the loss); the chosen point bold, starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ordered = sorted(results, key=lambda r: r.point.index)
    validated = any(getattr(r.trained, "validation_curve", ()) for r in ordered)
    fig, (curves, figures) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=90, width_ratios=[3, 2])
    for i, r in enumerate(ordered):
        points = r.trained.validation_curve if validated else r.trained.loss_curve
        bold = r.point.key == chosen.point.key
        label = f"{r.point.index}: {r.point.key}" + (" (chosen)" if bold else "")
        steps, losses = [s for s, _ in points], [v for _, v in points]
        curves.plot(steps, losses, color=f"C{i}", marker="o", markersize=3, linewidth=2.6 if bold else 1.2, label=label)
        value = r.metrics.get(select, math.nan)
        figures.scatter([r.point.index], [value], color=f"C{i}", marker="*" if bold else "o", s=160 if bold else 40)
        if math.isfinite(value):
            figures.annotate(f"{shown(value)}", (r.point.index, value), textcoords="offset points", xytext=(6, 4))
    curves.set(xlabel="step", ylabel="validation loss" if validated else "training loss")
    curves.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    curves.grid(alpha=0.3)
    curves.legend(title="point", fontsize=7)
    figures.set(xlabel="point", ylabel=select, xticks=[r.point.index for r in ordered])
    figures.margins(x=0.25, y=0.2)
    figures.grid(alpha=0.3)
    fig.tight_layout()
    return fig
