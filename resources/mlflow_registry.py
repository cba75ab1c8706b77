"""MLflow tracking and the model registry: runs, logged models, versions and aliases."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

CHAMPION = "champion"
CHALLENGER = "challenger"


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
    def start_run(self, run_name: str, tags: dict[str, str]) -> Iterator[object]:
        """An MLflow run that ends FINISHED on success and FAILED on error, never left RUNNING."""
        mlflow = self._connect()
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            yield run

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

    def download_model(self, version: str) -> str:
        """The logged model of a registered version as a local folder (MLmodel, model/, components/)."""
        import mlflow

        self._connect()
        return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.model_name}/{version}")

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
