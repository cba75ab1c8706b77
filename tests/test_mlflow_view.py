"""What an ML engineer finds in MLflow after a run: the training view, datasets, one comparison,
a described model, links to Dagster, names instead of temp paths, no personal data in samples."""

from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient

from assets.domain.lineage import base_model_name
from assets.domain.metrics import comparison_rows
from assets.domain.values import short_run_id
from assets.model_evaluation import samples_frame
from assets.registered_model import comparison_chart
from resources.mlflow_registry import MlflowRegistry


def test_comparison_rows_put_the_primary_metric_first_and_round_only_what_is_shown():
    rows = comparison_rows(
        {"exact_match": 0.123456, "eval_loss": 2.0}, {"exact_match": 0.5, "eval_loss": 1.25}, "exact_match", {}
    )
    assert rows[0] == {
        "metric": "exact_match", "primary": True, "base": 0.1235, "tuned": 0.5, "change": 0.3765, "champion": None,
    }  # fmt: skip
    assert rows[1]["metric"] == "eval_loss" and rows[1]["change"] == -0.75
    assert "champion" not in comparison_rows({"a": 1.0}, {"a": 1.0}, "a")[0], "no champion, no column"


def test_comparison_chart_is_one_figure_with_every_metric():
    frame = pd.DataFrame(comparison_rows({"exact_match": 0.1, "eval_loss": 2.0}, {"exact_match": 0.5, "eval_loss": 1.0},
                                         "exact_match", {"exact_match": 0.4, "eval_loss": 1.5}))  # fmt: skip
    figure = comparison_chart(frame)
    labels = [t.get_text() for ax in figure.axes for t in ax.get_xticklabels()]
    assert sorted(labels) == ["eval_loss", "exact_match"], "scores and losses on their own axes"
    assert sum(len(ax.patches) for ax in figure.axes) == 6, "three bars (base, tuned, champion) per metric"


def test_the_mlflow_run_is_named_by_the_model_and_the_dagster_runs_short_id():
    registry = MlflowRegistry(tracking_uri="sqlite:///unused.db", artifact_root="", model_name="ticket-triage")
    run_id = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
    assert registry.training_run_name(run_id) == "ticket-triage-0f1e2d3c"
    assert registry.training_run_name(run_id) == f"ticket-triage-{short_run_id(run_id)}", "the card's short id too"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("bundled:smollm2-135m-instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("/tmp/pytest-of-root/pytest-3/tiny-llama0/", "tiny-llama0"),
    ],
)
def test_a_base_model_is_named_not_located(source, name):
    assert base_model_name(source) == name


def test_samples_shown_have_personal_data_redacted():
    examples = SimpleNamespace(
        conversations=[[{"role": "user", "content": "Mail me at jane.doe@example.com or call +1 415-555-0134"}, {}]]
        * 2,
        expected=['{"category": "billing"}', "write to bob@corp.io"],
    )
    answers = {"base": ["ok", "jane.doe@example.com"], "tuned": ["x", "y"], "champion": None}
    frame = samples_frame(examples, answers, {"base": (0.0, 0.0), "tuned": (1.0, 0.25)}, "rougeL")
    text = frame.to_string()
    assert "@" not in text and "555" not in text and "[EMAIL]" in text and "[PHONE]" in text
    assert list(frame.columns) == ["prompt", "expected", "base", "base rougeL", "tuned", "tuned rougeL"]
    assert list(frame["tuned rougeL"]) == ["right", "0.2500"] and list(frame["base rougeL"]) == ["wrong", "wrong"]


def test_links_between_the_uis_use_their_configured_addresses():
    registry = MlflowRegistry(
        tracking_uri="sqlite:///x.db", artifact_root="/a", model_name="m",
        ui_url="http://mlflow.local:5000/", dagster_ui_url="http://dagster.local:3000",
    )  # fmt: skip
    assert registry.dagster_run_url("abc") == "http://dagster.local:3000/runs/abc"
    assert registry.version_url("3") == "http://mlflow.local:5000/#/models/m/versions/3?workflowType=machine_learning"


@pytest.mark.integration
def test_the_mlflow_run_reads_as_a_training_run(pipeline):
    settings, first = pipeline["settings"], pipeline["first"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version(settings.model_name, "1")
    run = client.get_run(version.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    pairs, evaluation = first.output_for_node("instruction_pairs").summary, first.output_for_node("model_evaluation")
    assert evaluation.eval_set_hash == pairs.eval_set_hash == version.tags["data.eval_set_hash"], "one eval set hash"
    inputs = {d.dataset.name: (d.dataset.digest, [t.value for t in d.tags]) for d in run.inputs.dataset_inputs}
    assert inputs == {
        "instruction_pairs.train": (pairs.train_set_hash, ["training"]),
        "instruction_pairs.eval": (pairs.eval_set_hash, ["evaluation"]),
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/comparison.csv", "eval/comparison.png"} <= artifacts
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "eval/comparison.csv"))
    assert set(table["metric"]) == set(evaluation.tuned) and table["metric"][0] == evaluation.primary_metric
    dagster_url = f"http://127.0.0.1:3000/runs/{first.run_id}"
    assert run.data.tags["dagster.run_url"] == version.tags["dagster.run_url"] == dagster_url
    assert dagster_url in run.data.tags["mlflow.note.content"] and dagster_url in version.description
    assert run.data.params["base_model"] == version.tags["base_model"] == "tiny-llama0"
    model = client.get_registered_model(settings.model_name)
    assert "champion" in model.description and model.tags["base_model"] == "tiny-llama0"


@pytest.mark.integration
def test_dagster_metadata_links_to_the_mlflow_run_and_version(pipeline):
    import dagster as dg

    record = pipeline["instance"].fetch_materializations(dg.AssetKey("registered_model"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    version = metadata["version"].value
    assert metadata["mlflow_model_version"].value == (
        f"http://127.0.0.1:5000/#/models/test-model/versions/{version}?workflowType=machine_learning"
    )
    assert metadata["mlflow_run"].value.endswith(
        f"/runs/{metadata['mlflow_run_id'].value}?workflowType=machine_learning"
    )
