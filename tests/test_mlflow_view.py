"""What an ML engineer finds in MLflow after a run: the training view, datasets, one comparison,
a described model, links to Dagster, names instead of temp paths, no personal data in samples."""

import asyncio
import json
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient

import pipelines.mlflow_ui
from assets.domain.figures import shown
from assets.domain.lineage import base_model_name
from assets.domain.metrics import comparison_rows
from assets.domain.values import short_run_id
from assets.model_evaluation import samples_frame
from assets.registered_model import comparison_chart
from pipelines.mlflow_ui import OperatorView, landing_page
from resources.mlflow_registry import MlflowRegistry, landing_route, logged


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


VIEW = "workflowType=machine_learning"


def test_links_between_the_uis_go_through_the_links_server_or_straight_to_the_uis():
    direct = MlflowRegistry(
        tracking_uri="sqlite:///x.db", artifact_root="/a", model_name="m",
        ui_url="http://mlflow.local:5000/", dagster_ui_url="http://dagster.local:3000",
    )  # fmt: skip
    assert direct.dagster_run_url("abc") == "http://dagster.local:3000/runs/abc"
    assert direct.version_url("3") == "http://mlflow.local:5000/#/models/m/versions/3?" + VIEW
    linked = direct.model_copy(update={"links_url": "http://127.0.0.1:3030/"})
    assert linked.dagster_run_url("abc") == "http://127.0.0.1:3030/go/dagster/runs/abc", "no UI's port in a link"
    assert linked.version_url("3") == "http://127.0.0.1:3030/go/mlflow/models/m/versions/3?" + VIEW
    assert linked.model_route() == "#/models/m?workflowType=machine_learning", "inside MLflow: relative"


FIGURES = [0.007692, 7.70666566718009e-7, 2.5e-5, 0.00025, 0.5964912280701754, 48022.21259827196, 0.0]
FIGURES += [-0.0027809689232871173, 0.001, 0.00099996, -3e-9, 1e300, float("inf")]


@pytest.mark.parametrize("value", FIGURES)
def test_metrics_are_logged_as_the_uis_show_figures(value):
    assert logged(value) == shown(value), "one rule: MLflow's tables show what Dagster's metadata shows"
    assert (logged(0.007692), logged(7.70666566718009e-7), logged(0.00025)) == (0.0077, 7.707e-7, 0.00025)


def test_the_gate_view_is_saved_on_the_experiment_and_mlflow_opens_on_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowRegistry(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts"), model_name="m")
    assert landing_route(uri) is None, "no experiment yet: MLflow's own home"
    registry.client()  # creates the experiment
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("fine-tuning").experiment_id
    assert landing_route(uri) == f"#/experiments/{experiment}/runs?workflowType=machine_learning"
    registry.save_gate_view(["gate.vs_base.difference", "gate.vs_base.low", "gate.passed"], ["gate.passed"])
    assert landing_route(uri) == (
        f"#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey=promotion-gate"
    )
    tag = MlflowClient(tracking_uri=uri).get_experiment(experiment).tags["mlflow.sharedViewState.promotion-gate"]
    view = json.loads(tag)
    assert view["name"] == "Promotion gate" and view["createdAt"] == view["updatedAt"]
    assert json.loads(view["state"])["selectedColumns"] == [
        "tags.`gate.passed`", "metrics.`gate.vs_base.difference`", "metrics.`gate.vs_base.low`", "metrics.`gate.passed`"
    ]  # fmt: skip


PAGE = b'<!doctype html><html><head><title>MLflow</title><script defer src="main.js"></script></head><body></body>'


def call(app, path: str) -> tuple[dict, bytes]:
    """One GET of `path` through the ASGI `app`: the response's start message and its body."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    return sent[0], b"".join(m.get("body", b"") for m in sent[1:])


async def mlflow_page(scope, receive, send):
    """MLflow's app as the operator view sees it: its page, whatever the path."""
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(PAGE)).encode()), (b"etag", b"x")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAGE})


def test_mlflow_opens_on_the_training_view_of_the_experiment(monkeypatch):
    route = "#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=promotion-gate"
    monkeypatch.setattr(pipelines.mlflow_ui, "landing_route", lambda uri: route)
    start, body = call(OperatorView(mlflow_page, "sqlite:///unused.db"), "/")
    page = body.decode()
    assert page.index("localStorage") < page.index("</head>"), "set while the page is read: MLflow's code is deferred"
    assert json.dumps(route) in page and '\\"machine_learning\\"' in page
    headers = dict(start["headers"])
    assert headers[b"content-length"] == str(len(body)).encode() and b"etag" not in headers
    assert headers[b"cache-control"] == b"no-store"
    assert call(OperatorView(mlflow_page, "sqlite:///unused.db"), "/static-files/x.js")[1] == PAGE, "the rest: MLflow's"
    assert "route = null" in landing_page(PAGE.decode(), None), "no experiment yet: the defaults only"


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
    dagster_url = f"http://127.0.0.1:3030/go/dagster/runs/{first.run_id}"  # through the links server
    assert run.data.tags["dagster.run_url"] == version.tags["dagster.run_url"] == dagster_url
    assert dagster_url in run.data.tags["mlflow.note.content"] and dagster_url in version.description
    assert run.data.params["base_model"] == version.tags["base_model"] == "tiny-llama0"
    model = client.get_registered_model(settings.model_name)
    assert "champion" in model.description and model.tags["base_model"] == "tiny-llama0"
    assert "[all versions](#/models/test-model?workflowType=machine_learning)" in model.description, "relative"
    assert round(run.data.metrics["train.loss_mean"], 4) == run.data.metrics["train.loss_mean"], "logged rounded"
    assert "mlflow.sharedViewState.promotion-gate" in experiment.tags, "the runs list's gate columns"


@pytest.mark.integration
def test_dagster_metadata_links_to_the_mlflow_run_and_version(pipeline):
    import dagster as dg

    record = pipeline["instance"].fetch_materializations(dg.AssetKey("registered_model"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    version = metadata["version"].value
    assert metadata["mlflow_model_version"].value == (
        f"http://127.0.0.1:3030/go/mlflow/models/test-model/versions/{version}?workflowType=machine_learning"
    ), "through the links server, which finds MLflow wherever it runs when the link is opened"
    assert metadata["mlflow_run"].value.endswith(
        f"/runs/{metadata['mlflow_run_id'].value}?workflowType=machine_learning"
    )
