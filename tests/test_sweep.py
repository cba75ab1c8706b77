"""Hyperparameter sweeps: the points a preset's `sweep` section names (plain functions), the definitions
it loads, and one real sweep of three learning rates through `make run`'s driver on the tiny Llama: each
point its own step and MLflow child run, the point of the lowest validation loss handed to DPO's place,
evaluation and registration, and the points visible through the Dagster UI's GraphQL API."""

import math
import pickle
import re
from dataclasses import replace

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets.domain.sweep import (
    PointResult,
    SweepConfig,
    SweepPoint,
    apply,
    best,
    comparison_chart,
    plan,
    point_key,
    points,
    points_markdown,
    sweepable,
)
from assets.domain.training import TrainingConfig
from assets.domain.values import TrainedModel
from pipelines.settings import SAMPLE_LANDING
from resources.models import BUNDLED_BASE_MODEL
from tests.conftest import make_settings, run_all

MAPPING_KEY = re.compile(r"^[A-Za-z0-9_]+$")
VALIDATED = TrainingConfig(sft={"validation_fraction": 0.2})


def sweep(**values) -> SweepConfig:
    return SweepConfig(**values)


# ---- the points ----------------------------------------------------------------------------------


def test_grid_is_every_combination_in_order_and_a_range_gives_count_values():
    grid = points(sweep(parameters={"sft.learning_rate": [1e-4, 3e-4], "lora_r": [8, 16, 32]}), seed=0)
    assert grid == [{"sft.learning_rate": lr, "lora_r": r} for lr in (1e-4, 3e-4) for r in (8, 16, 32)]
    linear = points(sweep(parameters={"sft.warmup_steps": {"low": 0, "high": 20, "count": 3}}), seed=0)
    assert linear == [{"sft.warmup_steps": 0}, {"sft.warmup_steps": 10}, {"sft.warmup_steps": 20}]
    logged = points(sweep(parameters={"sft.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}), seed=0)
    assert [p["sft.learning_rate"] for p in logged] == [1e-5, 1e-4, 1e-3], "evenly spaced on a log scale"
    ranks = points(sweep(parameters={"lora_r": {"low": 4, "high": 32, "log": True, "count": 4}}), seed=0)
    assert [p["lora_r"] for p in ranks] == [4, 8, 16, 32], "a whole-number setting gets whole numbers"


def test_a_grid_over_the_budget_is_refused_not_cut():
    with pytest.raises(ValueError, match=r"the grid has 9 points \(3 x 3\) and sweep.budget is 8.*strategy random"):
        points(sweep(parameters={"lora_r": [4, 8, 16], "seed": [0, 1, 2]}), seed=0)


def test_random_draws_budget_distinct_points_seeded_and_within_the_ranges():
    config = sweep(
        strategy="random",
        budget=5,
        parameters={"sft.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "lora_r": [8, 16]},
    )
    drawn = points(config, seed=7)
    assert len(drawn) == 5 and len({point_key(p) for p in drawn}) == 5
    assert drawn == points(config, seed=7), "the same seed draws the same points"
    assert drawn != points(config, seed=8)
    assert all(1e-5 <= p["sft.learning_rate"] <= 1e-3 and p["lora_r"] in (8, 16) for p in drawn)
    small = [p["sft.learning_rate"] < 1e-4 for p in points(config.model_copy(update={"budget": 60}), seed=1)]
    assert 0.25 < sum(small) / len(small) < 0.75, "log-uniform: about half the draws below the geometric middle"
    few = points(sweep(strategy="random", budget=8, parameters={"lora_r": [8, 16]}), seed=0)
    assert sorted(p["lora_r"] for p in few) == [8, 16], "no more points than distinct ones"


def test_no_parameters_is_no_sweep():
    assert points(SweepConfig(), seed=0) == [] and plan(SweepConfig(), TrainingConfig()) == []


def test_a_path_a_sweep_cannot_change_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"sft.learning_rat is no training setting; a sweep may change: .*lora_r"):
        sweep(parameters={"sft.learning_rat": [1e-4]})
    with pytest.raises(ValueError, match=r"dpo.beta: a sweep trains the SFT stage once per point"):
        sweep(parameters={"dpo.beta": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"save_steps: .* how a point checkpoints, not what it learns"):
        sweep(parameters={"save_steps": [5, 10]})
    assert {"lora_r", "seed", "sft.learning_rate", "sft.max_steps", "sft.validation_fraction"} <= set(sweepable())
    with pytest.raises(ValueError, match="either a list of values or a range"):
        sweep(parameters={"lora_r": {"values": [8], "low": 4, "high": 8}})
    with pytest.raises(ValueError, match="a log range needs low above 0"):
        sweep(parameters={"sft.learning_rate": {"low": 0, "high": 1e-3, "log": True}})


def test_point_keys_are_readable_dagster_mapping_keys():
    assert point_key({"sft.learning_rate": 0.0001, "lora_r": 8}) == "sft_learning_rate_0_0001__lora_r_8"
    odd = {"sft.learning_rate": 1e-05, "lora_target_modules": "q_proj, v_proj", "sft.padding_free": True}
    assert point_key(odd) == "sft_learning_rate_1em05__lora_target_modules_q_proj_v_proj__sft_padding_free_true"
    assert all(MAPPING_KEY.match(point_key(p)) for p in [odd, {"seed": -1}, {"lr_scheduler_type": "cosine"}])


def test_apply_puts_the_values_in_and_plan_types_and_checks_every_point():
    trained = apply(VALIDATED, {"sft.learning_rate": 5e-4, "lora_r": 4})
    assert (trained.sft.learning_rate, trained.lora_r, trained.sft.validation_fraction) == (5e-4, 4, 0.2)
    assert VALIDATED.lora_r == 16, "the settings given are left as they were"
    (point,) = plan(sweep(parameters={"sft.learning_rate": ["1e-4"]}), VALIDATED)  # YAML reads 1e-4 as a string
    assert point == SweepPoint(0, "sft_learning_rate_0_0001", {"sft.learning_rate": 0.0001})
    with pytest.raises(ValueError, match=r"lora_r\n  Input should be a valid integer"):
        plan(sweep(parameters={"lora_r": [8.5]}), VALIDATED)
    with pytest.raises(ValueError, match="Set training.sft.validation_fraction"):
        plan(sweep(parameters={"lora_r": [8, 16]}), TrainingConfig())
    assert len(plan(sweep(parameters={"lora_r": [8, 16]}, select="train_loss"), TrainingConfig())) == 2
    with pytest.raises(ValueError, match="training.method 'dpo' has none"):
        plan(sweep(parameters={"lora_r": [8]}, select="train_loss"), TrainingConfig(method="dpo"))


def test_the_second_stage_trains_with_the_chosen_points_settings():
    """A swept shared setting (lora_r, seed) holds for DPO/GRPO too; without a sweep the preset's settings stand,
    and a value stored before sweeps (no sweep_point attribute) reads as no sweep."""
    from dataclasses import replace

    from assets.preference_tuned_model import trained_with

    training = TrainingConfig()
    sft = TrainedModel.base("/base", "cpu", training.flat(), "cpu", "sft")
    assert trained_with(training, sft) == training
    chosen = replace(sft, sweep_point={"lora_r": 8, "seed": 3, "sft.learning_rate": 1e-4})
    stage = trained_with(training, chosen)
    assert (stage.lora_r, stage.seed, stage.sft.learning_rate, stage.dpo) == (8, 3, 1e-4, training.dpo)
    old = replace(sft)
    object.__delattr__(old, "sweep_point")  # as a TrainedModel pickled before the field existed
    assert trained_with(training, old) == training


def result(index: int, **metrics) -> PointResult:
    trained = TrainedModel.base("base", "smoke", {}, "cpu", "sft")
    return PointResult(SweepPoint(index, f"p{index}", {"seed": index}), trained, metrics)


def test_best_is_the_lowest_finite_figure_the_earliest_on_a_tie():
    results = [result(0, validation_loss=2.0), result(1, validation_loss=math.nan), result(2, validation_loss=1.5)]
    assert best(results, "validation_loss").point.index == 2
    assert best(results, "validation_loss", maximize=True).point.index == 0, "a diverged point is never chosen"
    assert best([result(1, train_loss=1.0), result(0, train_loss=1.0)], "train_loss").point.index == 0
    with pytest.raises(ValueError, match="No sweep point reported a finite validation_loss .*train_loss"):
        best([result(0, train_loss=1.0)], "validation_loss")


def test_the_points_table_marks_the_chosen_point_and_the_chart_compares_every_point():
    results = [result(0, validation_loss=2.0), result(1, validation_loss=1.5)]
    table = points_markdown(results, results[1], "validation_loss").splitlines()
    assert "**chosen**" in table[3] and "p1" in table[3] and "**chosen**" not in table[2]
    figure = comparison_chart(results, results[1], "validation_loss")
    curves, figures = figure.axes
    assert len(curves.get_lines()) == 2 and len(figures.collections) == 2 and figures.get_ylabel() == "validation_loss"


# ---- the definitions -----------------------------------------------------------------------------

SWEEP_OVERRIDES = {
    "training": {"sft": {"validation_fraction": 0.2}},
    "sweep": {"parameters": {"sft.learning_rate": [1e-4, 3e-4]}},
}


def test_a_sweep_makes_fine_tuned_model_a_graph_with_the_same_key_inputs_and_jobs(tmp_path):
    from pipelines.definitions import build_definitions
    from pipelines.pod_resources import step_pods

    settings = make_settings(tmp_path, BUNDLED_BASE_MODEL)
    plain, swept = build_definitions(settings), build_definitions(settings, SWEEP_OVERRIDES)
    key = dg.AssetKey("fine_tuned_model")
    assert not isinstance(plain.resolve_assets_def(key).node_def, dg.GraphDefinition)
    node = swept.resolve_assets_def(key)
    assert isinstance(node.node_def, dg.GraphDefinition)
    assert {n.name for n in node.node_def.nodes} == {"sweep_points", "train_point", "best_point"}
    assert swept.resolve_asset_graph().get(key).parent_keys == plain.resolve_asset_graph().get(key).parent_keys
    assert node.group_names_by_key[key] == "model" and node.automation_conditions_by_key[key] is not None
    assert node.node_def.node_named("train_point").definition.pool == "training"
    finetune = swept.resolve_job_def("finetune")
    assert "fine_tuned_model" in {n.name for n in finetune.nodes}
    assert "train_point" in step_pods("local", sweep=True) and "train_point" not in step_pods("local")
    with pytest.raises(ValueError, match=r"Preset 'smoke' .*Set training.sft.validation_fraction"):
        build_definitions(settings, {"sweep": SWEEP_OVERRIDES["sweep"]})


# ---- one real sweep ------------------------------------------------------------------------------

# Learning rates far apart, so that the tiny model's validation losses differ in the figures MLflow keeps.
RATES = [1e-5, 3e-3, 3e-2]
RUN_LOGS = """query ($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { stepStats { stepKey status } } }
  logsForRun(runId: $runId) { ... on EventConnection { events {
    __typename
    ... on ExecutionStepOutputEvent { stepKey metadataEntries { label
      ... on FloatMetadataEntry { floatValue } ... on TextMetadataEntry { text } } }
    ... on MaterializationEvent { stepKey assetKey { path } metadataEntries { label
      ... on MarkdownMetadataEntry { mdStr } ... on TextMetadataEntry { text } } }
  } } }
}"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir):
    """`make run` on one drop of 40 sample tickets with a sweep of three SFT learning rates: two steps each,
    a quarter of the prompts held back and validated at every step; method sft (no DPO: the candidate is
    the chosen SFT model); the gate lowered so the version becomes champion."""
    landing = tmp_path_factory.mktemp("landing")
    (landing / "2026-01-05").mkdir()
    tickets = (SAMPLE_LANDING / "2026-01-05" / "tickets.jsonl").read_text().splitlines(keepends=True)[:40]
    (landing / "2026-01-05" / "tickets.jsonl").write_text("".join(tickets))
    home = tmp_path_factory.mktemp("ft_sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
    overrides = {
        # No warm-up and a constant rate: the smoke preset's one warm-up step of two would train at rate 0.
        "training": {
            "method": "sft",
            "lr_scheduler_type": "constant",
            "sft": {"max_steps": 2, "warmup_steps": 0, "validation_fraction": 0.25, "eval_steps": 1},
        },
        "evaluation": {"max_eval_examples": 3},
        "gate": {"min_improvement": -1.0, "max_forgetting_pct": 1000.0},
        "sweep": {"parameters": {"sft.learning_rate": RATES}},
    }
    instance = dg.DagsterInstance.get()  # the one under DAGSTER_HOME, as the webserver reads it
    _, _, run, problems = run_all(settings, overrides, instance)
    yield {"settings": settings, "instance": instance, "run": run, "problems": problems}
    instance.dispose()
    mp.undo()


def point_steps(run) -> list[str]:
    return sorted(e.step_key for e in run.get_step_success_events() if "train_point[" in e.step_key)


def stored_points(swept) -> dict[str, PointResult]:
    """Each point's result as its step stored it (the filesystem IO manager), by point name: exact figures."""
    run, home = swept["run"], swept["settings"].home
    steps = (home / "storage" / run.run_id).glob("fine_tuned_model.train_point[[]*")
    return {r.point.key: r for r in (pickle.loads((step / "result").read_bytes()) for step in steps)}


@pytest.mark.integration
def test_each_point_trains_in_its_own_step_and_the_lowest_validation_loss_goes_on(swept):
    run, settings = swept["run"], swept["settings"]
    assert run.success, swept["problems"]
    keys = [point_key({"sft.learning_rate": rate}) for rate in RATES]
    assert point_steps(run) == sorted(f"fine_tuned_model.train_point[{k}]" for k in keys)
    results = stored_points(swept)
    assert sorted(results) == sorted(keys)
    losses = {key: r.trained.best_validation_loss for key, r in results.items()}
    assert len(set(losses.values())) > 1, f"the rates must train differently for the choice to mean anything: {losses}"
    lowest = min(losses, key=losses.get)
    chosen = run.output_for_node("fine_tuned_model")
    # The chosen point's model, carrying its point's settings on to the second stage.
    assert chosen.sweep_point == {"sft.learning_rate": RATES[keys.index(lowest)]}
    assert replace(chosen, sweep_point={}) == results[lowest].trained and chosen.validation_examples > 0
    assert chosen.settings["sft.learning_rate"] == RATES[keys.index(lowest)]
    assert len({r.trained.merged_dir for r in results.values()}) == 3, "each point its own folder"
    assert f"/fine_tuned_model/{lowest}/" in chosen.merged_dir
    # Downstream got the chosen point: the candidate (method sft: the SFT model), its evaluation, its version.
    candidate = run.output_for_node("preference_tuned_model")
    assert (candidate.merged_dir, candidate.mlflow_run_id) == (chosen.merged_dir, chosen.mlflow_run_id)
    assert run.output_for_node("model_evaluation").eval_examples == 3
    version = MlflowClient(settings.mlflow_tracking_uri).get_model_version(settings.model_name, "1")
    assert version.run_id == chosen.mlflow_run_id
    assert run.output_for_node("champion_model").version == "1"


@pytest.mark.integration
def test_mlflow_has_a_parent_run_with_a_child_per_point_and_a_comparison_chart(swept):
    settings, chosen = swept["settings"], swept["run"].output_for_node("fine_tuned_model")
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("fine-tuning").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`sweep.points` = '3'")
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    assert {float(c.data.params["sweep.sft.learning_rate"]) for c in children} == set(RATES)
    assert {c.data.tags["sweep.point"]: c.info.run_id for c in children} == {
        key: r.trained.mlflow_run_id for key, r in stored_points(swept).items()
    }
    (lowest,) = [c for c in children if c.info.run_id == chosen.mlflow_run_id]
    logged_losses = [c.data.metrics["sweep.validation_loss"] for c in children]
    assert lowest.data.metrics["sweep.validation_loss"] == min(logged_losses), "as MLflow shows them (4 decimals)"
    assert parent.data.tags["sweep.best_run_id"] == chosen.mlflow_run_id
    assert all(c.data.tags["mlflow.runName"].endswith(c.data.tags["sweep.point"]) for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/comparison.png", "sweep/points.json", "sweep/settings.json"} <= artifacts
    assert parent.data.metrics["best.validation_loss"] == lowest.data.metrics["sweep.validation_loss"]
    assert "**chosen**" in parent.data.tags["mlflow.note.content"]


@pytest.mark.integration
def test_the_dagster_ui_shows_each_point_with_its_settings_and_results(swept):
    """What the UI's run page and asset page read (the webserver's GraphQL, over the run's instance)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    run = swept["run"]
    with WorkspaceProcessContext(swept["instance"], EmptyWorkspaceTarget()) as process:
        data = execute_dagster_graphql(process.create_request_context(), RUN_LOGS, {"runId": run.run_id}).data
    steps = {s["stepKey"]: s["status"] for s in data["runOrError"]["stepStats"]}
    points = {k for k in steps if k.startswith("fine_tuned_model.train_point[")}
    assert len(points) == 3 and {steps[k] for k in points} == {"SUCCESS"}
    events = data["logsForRun"]["events"]
    shown = {
        e["stepKey"]: {m["label"] for m in e["metadataEntries"]}
        for e in events
        if e["__typename"] == "ExecutionStepOutputEvent" and e["stepKey"] in points
    }
    assert set(shown) == points and all({"point", "settings", "point_validation_loss"} <= s for s in shown.values())
    (materialized,) = [
        e for e in events if e["__typename"] == "MaterializationEvent" and e["assetKey"]["path"] == ["fine_tuned_model"]
    ]
    table = next(m["mdStr"] for m in materialized["metadataEntries"] if m["label"] == "sweep_points")
    chosen = run.output_for_node("fine_tuned_model")
    (row,) = [line for line in table.splitlines() if "**chosen**" in line]
    assert point_key({"sft.learning_rate": chosen.settings["sft.learning_rate"]}) in row
    assert len([line for line in table.splitlines() if "sft_learning_rate_" in line]) == 3
