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
