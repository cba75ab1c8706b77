"""MLflow tracking and the model registry: runs, logged models, versions and aliases.

Every MLflow call of the project goes through here. Assets say *what* to record (params, metrics,
tags, files) and this module says how MLflow stores it.
"""

import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.credentials import masked

CHAMPION = "champion"
CHALLENGER = "challenger"
# The served model's code (logged as code, never imported here) and its default reply length.
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
DEFAULT_MAX_NEW_TOKENS = 256
# MLflow 3.17's UI shows an experiment as a GenAI app (traces) or as model training (runs, charts).
# Its sidebar switch decides, not the experiment's kind tag (kept for other clients): the switch
# follows `workflowType` in a link, else the browser's last choice, GenAI at first.
# `pipelines/mlflow_ui.py` makes the training view the first choice; links name it.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
TRAINING_VIEW = "workflowType=machine_learning"
EXPERIMENT = "fine-tuning"
# The experiment's saved view of the runs list with the gate's columns (MLflow's saved views are
# experiment tags `mlflow.sharedViewState.<key>`; a link with `viewStateShareKey=<key>` opens one).
SAVED_VIEW_TAG, GATE_VIEW, GATE_VIEW_NAME = "mlflow.sharedViewState.", "promotion-gate", "Promotion gate"
# MLflow's UI shows a metric as it was logged, so metrics are logged as the UIs show figures: 4
# decimals, or 4 significant digits below 0.001 (the rule of `assets.domain.figures.shown`;
# resources import no assets: a test keeps the two equal). The full values are in the run's
# `eval/metrics.json` and the asset values.
SHOWN_DECIMALS, SIGNIFICANT_DIGITS, SMALL = 4, 4, 1e-3
# How many characters of a Dagster run id name its MLflow run: the rule of
# `assets.domain.values.short_run_id` (resources import no assets; a test keeps the two equal).
SHORT_RUN_ID = 8
# The run tag naming the Dagster run, and the one linking to it in the Dagster UI.
DAGSTER_RUN_TAG, DAGSTER_RUN_URL_TAG = "dagster.run_id", "dagster.run_url"


def logged(value: float) -> float:
    """A metric value as it is logged (and shown): see SHOWN_DECIMALS."""
    value = float(value)
    if not math.isfinite(value) or not value:
        return value
    if abs(value) >= SMALL:
        return round(value, SHOWN_DECIMALS)
    return round(value, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))


def column(kind: str, key: str) -> str:
    """A column of MLflow's runs list: `metrics`, `params` or `tags` and the key."""
    return f"{kind}.`{key}`"


def saved_view(name: str, columns: list[str], now_ms: int) -> str:
    """A saved view of MLflow's runs list (an experiment tag's value): `columns` shown, newest first."""
    state = {"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False}
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def landing_route(tracking_uri: str, experiment: str = EXPERIMENT) -> str | None:
    """Where MLflow's UI opens (its hash route): the experiment's runs list in the training view,
    in the gate's saved view once a registration saved it; None while the experiment does not exist."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    view = f"&viewStateShareKey={GATE_VIEW}" if f"{SAVED_VIEW_TAG}{GATE_VIEW}" in found.tags else ""
    return f"#/experiments/{found.experiment_id}/runs?{TRAINING_VIEW}{view}"


def chat_signature(default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """Chat messages in (optionally with `tools`, and turns with `tool_calls` or answering one by
    `tool_call_id`); role, content, finish reason and any parsed `tool_calls` out; generation params
    per request. Tool schemas are free-form JSON, so `tools` is `AnyType`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType, Array, Object, Property

    function = Object([Property("name", DataType.string), Property("arguments", DataType.string)])
    call = Array(
        Object(
            [
                Property("id", DataType.string, required=False),
                Property("type", DataType.string, required=False),
                Property("function", function),
            ]
        )
    )
    message = Object(
        [
            Property("role", DataType.string),
            Property("content", DataType.string, required=False),
            Property("tool_calls", call, required=False),
            Property("tool_call_id", DataType.string, required=False),
        ]
    )
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), "messages"), ColSpec(AnyType(), "tools", required=False)]),
        outputs=Schema(
            [ColSpec(DataType.string, n) for n in ("role", "content", "finish_reason")]
            + [ColSpec(call, "tool_calls", required=False)]
        ),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", DataType.long, default_max_new_tokens),
                ParamSpec("temperature", DataType.double, 0.0),
            ]
        ),
    )


def serving_requirements() -> list[str]:
    """What the served model needs, pinned to the versions it was logged with."""
    import mlflow
    import torch
    import transformers

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
    ]


# MLflow itself retries every request to a tracking server it cannot reach (refused connections,
# timeouts, 429 and 5xx answers), backing off exponentially as these environment variables say
# (defaults: 7 retries, factor 2, about four minutes in all); registration relies on that and fails
# with `unreachable_message` once MLflow gives up.
HTTP_RETRY_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def is_transient(error: Exception) -> bool:
    """Errors worth a retry: the tracking server could not be reached, not a mistake in the request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or "Max retries" in str(error)
    return False


class TrackedRun:
    """An open MLflow run: what an asset records on it, by name."""

    def __init__(self, mlflow, run):
        self._mlflow, self.run_id = mlflow, run.info.run_id

    def log_params(self, params: dict[str, str]) -> None:
        self._mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: logged(v) for k, v in metrics.items()}, step=step)

    def log_series(self, name: str, points: list[tuple[int, float]] | tuple) -> None:
        """A metric over steps, such as the training loss curve."""
        for step, value in points:
            self._mlflow.log_metric(name, logged(value), step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_file(self, path: str, folder: str | None = None) -> None:
        self._mlflow.log_artifact(path, folder)

    def log_folder(self, path: str, folder: str) -> None:
        self._mlflow.log_artifacts(path, folder)

    def log_table(self, frame, name: str) -> None:
        self._mlflow.log_table(frame, name)

    def log_dict(self, value: dict, name: str) -> None:
        self._mlflow.log_dict(value, name)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_figure(self, figure, name: str) -> None:
        """A matplotlib figure as an image artifact (PNG by `name`'s suffix)."""
        self._mlflow.log_figure(figure, name)

    def log_dataset(self, frame, name: str, digest: str, context: str, source: str | None = None) -> None:
        """`frame` as an MLflow dataset input of the run (its schema and profile, not its rows),
        named `name` with `digest` (the set's content hash), used for `context` (training, evaluation)."""
        dataset = self._mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
        self._mlflow.log_input(dataset, context=context)

    def describe(self, markdown: str) -> None:
        """The run's description (shown rendered as markdown on its page)."""
        self._mlflow.set_tag("mlflow.note.content", markdown)

    def log_parquet(self, frame, name: str, folder: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            frame.to_parquet(path, index=False)
            self._mlflow.log_artifact(str(path), folder)

    def log_chat_model(self, model_dir: str, code_paths: list[str] | tuple = ()) -> str:
        """The merged model folder as a chat pyfunc (`served_model.py`, logged as code) that
        `mlflow models serve` answers; returns the logged model's URI. `code_paths`: modules the
        served code imports by file name (the tool-call rendering), shipped beside it."""
        info = self._mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL_CODE),
            code_paths=[str(p) for p in code_paths] or None,
            artifacts={"model": model_dir},
            model_config={"default_max_new_tokens": DEFAULT_MAX_NEW_TOKENS},
            signature=chat_signature(),
            pip_requirements=serving_requirements(),
        )
        return info.model_uri


class MlflowRegistry(dg.ConfigurableResource):
    """One MLflow experiment and one registered model; opens runs and moves aliases."""

    tracking_uri: str = Field(description="MLFLOW_TRACKING_URI; sqlite under FT_HOME by default.")
    artifact_root: str = Field(
        description="Folder for the experiment's artifacts (absolute); empty: the tracking server's own "
        "artifact store (server profile: artifacts go through the server)."
    )
    experiment: str = Field(default=EXPERIMENT, description="MLflow experiment for pipeline runs.")
    model_name: str = Field(description="FT_MODEL_NAME: the registered model's name.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="FT_MLFLOW_UI_URL: the MLflow UI, for links.")
    dagster_ui_url: str = Field(
        default="http://127.0.0.1:3000", description="FT_DAGSTER_UI_URL: the Dagster UI, for links back from MLflow."
    )
    links_url: str = Field(
        default="",
        description="The links server (FT_DOCS_URL, started by `make dev` beside the Data Docs): links between "
        "the UIs go through it (`/go/mlflow/...`, `/go/dagster/...`) and it sends each on to wherever that UI runs "
        "when the link is opened, so a UI started on another port keeps earlier runs' links working. Empty: links "
        "go straight to ui_url and dagster_ui_url.",
    )

    def _connect(self):
        import mlflow
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            try:
                # Without an explicit location artifacts land relative to the working directory.
                mlflow.create_experiment(
                    self.experiment,
                    artifact_location=Path(self.artifact_root).as_uri() if self.artifact_root else None,
                    tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},
                )
            except MlflowException as error:  # a run started at the same moment made it first
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        experiment = mlflow.set_experiment(self.experiment)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # made before the tag was set
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return mlflow

    def _mlflow_link(self, route: str) -> str:
        """A link to MLflow's UI page `route` (its hash route, without '#/'), in the training view."""
        if self.links_url:
            return f"{self.links_url.rstrip('/')}/go/mlflow/{route}?{TRAINING_VIEW}"
        return f"{self.ui_url.rstrip('/')}/#/{route}?{TRAINING_VIEW}"

    def dagster_run_url(self, dagster_run_id: str) -> str:
        if self.links_url:
            return f"{self.links_url.rstrip('/')}/go/dagster/runs/{dagster_run_id}"
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{dagster_run_id}"

    def training_run_name(self, dagster_run_id: str) -> str:
        """The name of the MLflow run that a Dagster run trains, evaluates and registers a model in:
        the model's name and the Dagster run's short id, so the two runs are found from each other."""
        return f"{self.model_name}-{dagster_run_id[:SHORT_RUN_ID]}"

    def run_url(self, run_id: str) -> str:
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return self._mlflow_link(f"experiments/{experiment_id}/runs/{run_id}")

    def version_url(self, version: str) -> str:
        return self._mlflow_link(f"models/{self.model_name}/versions/{version}")

    def model_route(self) -> str:
        """The registered model's page as a link inside MLflow's own pages (relative: it holds
        wherever MLflow runs)."""
        return f"#/models/{self.model_name}?{TRAINING_VIEW}"

    def save_gate_view(self, metrics: list[str], tags: list[str]) -> None:
        """The experiment's saved view `Promotion gate` (GATE_VIEW): the runs list with these run tags
        (the verdict) and metrics (each criterion's difference and interval) as its columns. MLflow's
        UI opens on it (`landing_route`) and lists it under the runs list's saved views."""
        columns = [column("tags", t) for t in tags] + [column("metrics", m) for m in metrics]
        experiment = self._connect().get_experiment_by_name(self.experiment)
        value = saved_view(GATE_VIEW_NAME, columns, int(time.time() * 1000))
        self.client().set_experiment_tag(experiment.experiment_id, f"{SAVED_VIEW_TAG}{GATE_VIEW}", value)

    def client(self):
        from mlflow import MlflowClient

        self._connect()
        return MlflowClient(tracking_uri=self.tracking_uri)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> Iterator[TrackedRun]:
        """An MLflow run that ends FINISHED on success and FAILED on error, never left RUNNING
        (unless its process is killed). With `run_id`, that existing run is reopened and continued.
        A run tagged with its Dagster run (`dagster.run_id`) also gets the link to it in the Dagster UI."""
        mlflow = self._connect()
        if DAGSTER_RUN_TAG in tags:
            tags = {**tags, DAGSTER_RUN_URL_TAG: self.dagster_run_url(tags[DAGSTER_RUN_TAG])}
        if run_id is not None:
            with mlflow.start_run(run_id=run_id) as run:
                mlflow.set_tags(tags)
                yield TrackedRun(mlflow, run)
            return
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            yield TrackedRun(mlflow, run)

    def run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client().get_run(run_id)
        except MlflowException:
            return False
        return True

    def register_version(self, model_uri: str, tags: dict[str, str], description: str, alias: str) -> str:
        """A new version of the registered model from a logged model, with its tags and description,
        holding `alias`; returns its number. When a step after the version's creation fails (the
        tracking server went away), the version is deleted again: none is left half-registered."""
        mlflow = self._connect()
        version = str(mlflow.register_model(model_uri, self.model_name, tags=tags).version)
        try:
            client = self.client()
            client.update_model_version(self.model_name, version, description=description)
            client.set_registered_model_alias(self.model_name, alias, version)
        except Exception as error:
            self._discard_version(version, error)
            raise
        return version

    def _discard_version(self, version: str, cause: Exception) -> None:
        try:
            self.client().delete_model_version(self.model_name, version)
        except Exception as error:
            raise RuntimeError(
                f"Version {version} of {self.model_name} was created but could not be completed "
                f"({masked(str(cause))[:300]}), and deleting it failed too ({masked(str(error))[:300]}). "
                "Delete that version in the MLflow UI, then re-execute registered_model."
            ) from cause

    def unreachable_message(self, error: Exception) -> str:
        """What a registration that failed because the tracking server was unreachable tells the user."""
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

        return (
            f"The MLflow tracking server {masked(self.tracking_uri)} could not be reached: MLflow retried each "
            f"request {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} times, backing off (factor "
            f"{MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()}; set by {', '.join(HTTP_RETRY_SETTINGS)}). "
            "Nothing was registered and no alias moved. Start the server (`make server`) or fix "
            "MLFLOW_TRACKING_URI, then re-execute registered_model: the trained model is kept. "
            f"Last error: {masked(str(error))[:500]}"
        )

    def describe_model(self, description: str, tags: dict[str, str]) -> None:
        """The registered model's own description (markdown) and tags, shown on its page."""
        client = self.client()
        client.update_registered_model(self.model_name, description=description)
        for key, value in tags.items():
            client.set_registered_model_tag(self.model_name, key, value)

    def version_by_alias(self, alias: str):
        """The model version holding `alias`, or None when no version has it yet."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            return client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(self.model_name, alias, version)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client().get_run(run_id).data.metrics)

    def run_dict(self, run_id: str, path: str) -> dict | None:
        """A JSON artifact of a run (`TrackedRun.log_dict`) as a dict; None when the run has none there."""
        import mlflow
        from mlflow.exceptions import MlflowException

        self._connect()
        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
        except (MlflowException, OSError):
            return None

    def download(self, run_id: str, path: str, dst: str | None = None) -> str:
        """A run's artifact folder, downloaded (or found) locally, into `dst` when given (a folder that
        later steps read too); returns the local path."""
        import mlflow

        self._connect()
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst)

    def download_model_weights(self, version: str, dst: str | None = None) -> str:
        """The Hugging Face folder inside a registered version's logged chat model (the merged
        model it serves), downloaded (or found) locally, into `dst` when given."""
        import mlflow

        self._connect()
        uri = f"models:/{self.model_name}/{version}"
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
        return str(next(folder.rglob("config.json")).parent)

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.model_name, version, key, value)

    def promote(self, version: str, by: str, reason: str) -> str | None:
        """Move alias `champion` to `version` and record who moved it, when and why on the version.

        Returns the version that held it before (None if none did). Used by the pipeline's
        `champion_model` asset and by `make promote` for roll-backs.
        """
        from datetime import UTC, datetime

        previous = self.version_by_alias(CHAMPION)
        self.set_alias(CHAMPION, str(version))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.tag_version(str(version), {"promoted_by": by, "promoted_at": now, "promotion_reason": reason})
        if previous is not None and str(previous.version) != str(version):
            self.tag_version(str(previous.version), {"demoted_at": now, "demoted_for": str(version)})
        return None if previous is None else str(previous.version)
