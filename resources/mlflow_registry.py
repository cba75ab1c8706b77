"""MLflow tracking and the model registry: runs, logged models, versions and aliases.

Every MLflow call of the project goes through here. Assets say *what* to record (params, metrics,
tags, files) and this module says how MLflow stores it.
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

CHAMPION = "champion"
CHALLENGER = "challenger"
# The served model's code (logged as code, never imported here) and its default reply length.
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
DEFAULT_MAX_NEW_TOKENS = 256


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
        self._mlflow.log_metrics(metrics, step=step)

    def log_series(self, name: str, points: list[tuple[int, float]] | tuple) -> None:
        """A metric over steps, such as the training loss curve."""
        for step, value in points:
            self._mlflow.log_metric(name, value, step=step)

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
    artifact_root: str = Field(description="Folder for the experiment's artifacts (absolute).")
    experiment: str = Field(default="fine-tuning", description="MLflow experiment for pipeline runs.")
    model_name: str = Field(description="FT_MODEL_NAME: the registered model's name.")

    def _connect(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            # Without an explicit location artifacts land relative to the working directory.
            mlflow.create_experiment(self.experiment, artifact_location=Path(self.artifact_root).as_uri())
        mlflow.set_experiment(self.experiment)
        return mlflow

    def client(self):
        from mlflow import MlflowClient

        self._connect()
        return MlflowClient(tracking_uri=self.tracking_uri)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> Iterator[TrackedRun]:
        """An MLflow run that ends FINISHED on success and FAILED on error, never left RUNNING
        (unless its process is killed). With `run_id`, that existing run is reopened and continued."""
        mlflow = self._connect()
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

    def register_version(self, model_uri: str, tags: dict[str, str], description: str) -> str:
        """A new version of the registered model from a logged model; returns its number."""
        mlflow = self._connect()
        version = mlflow.register_model(model_uri, self.model_name, tags=tags)
        self.client().update_model_version(self.model_name, version.version, description=description)
        return str(version.version)

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

    def download(self, run_id: str, path: str) -> str:
        """A run's artifact folder, downloaded (or found) locally; returns the local path."""
        import mlflow

        self._connect()
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)

    def download_model_weights(self, version: str) -> str:
        """The Hugging Face folder inside a registered version's logged chat model (the merged
        model it serves), downloaded (or found) locally."""
        import mlflow

        self._connect()
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.model_name}/{version}"))
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
