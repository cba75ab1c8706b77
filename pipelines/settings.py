"""The environment, read once: every setting comes from an environment variable with a default.

Nothing else in the project reads `os.environ` for its own settings; `pipelines.definitions` turns a
`Settings` into the resource set. `python -m pipelines.settings NAME` prints one derived value, so
the Makefile and shell scripts agree with Python about where state lives.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from resources.models import BUNDLED_BASE_MODEL

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LANDING = REPO_ROOT / "pipelines" / "sample_data" / "landing"
DEFAULT_MODEL_NAME = "ticket-triage"
DEFAULT_PRESET = "cpu"
DEFAULT_RETRAIN_CRON = "0 6 * * 1"


# The Dagster instance under FT_HOME: one run at a time in each concurrency pool (the training
# pool holds fine_tuned_model, preference_tuned_model and model_evaluation), no telemetry. Run
# monitoring (in the daemon) fails runs whose worker process died and frees their pool slots, so a
# killed run does not hold the training pool forever; `make run` does the same for its own runs
# (pipelines/stale_runs.py).
DAGSTER_INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
telemetry:
  enabled: false
nux:
  enabled: false
"""


@dataclass(frozen=True)
class Settings:
    home: Path
    """FT_HOME: all state (artifacts, MLflow db and artifacts, Dagster storage)."""
    landing_dir: str
    """FT_LANDING_DIR: the folder whose files are the raw data."""
    base_model: str
    """FT_BASE_MODEL: the bundled default, a local model folder, or a hub id."""
    model_name: str
    """FT_MODEL_NAME: the registered model's name in MLflow."""
    preset: str
    """FT_PRESET: the preset file under pipelines/presets/ the job runs with."""
    mlflow_tracking_uri: str
    """MLFLOW_TRACKING_URI: defaults to a sqlite file under FT_HOME."""
    retrain_cron: str = DEFAULT_RETRAIN_CRON
    """FT_RETRAIN_CRON: when the retraining schedule looks for new data (default Mondays 06:00)."""

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = Path(env.get("FT_HOME") or REPO_ROOT / ".ft").expanduser().resolve()
        tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        return cls(
            home=home,
            landing_dir=env.get("FT_LANDING_DIR") or str(SAMPLE_LANDING),
            base_model=env.get("FT_BASE_MODEL") or BUNDLED_BASE_MODEL,
            model_name=env.get("FT_MODEL_NAME") or DEFAULT_MODEL_NAME,
            preset=env.get("FT_PRESET") or DEFAULT_PRESET,
            mlflow_tracking_uri=tracking,
            retrain_cron=env.get("FT_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON,
        )

    def prepare(self) -> "Settings":
        """Create the state folders and point Dagster at its home (it must exist and be absolute)."""
        for folder in (self.home, self.dagster_home, self.artifacts_dir, self.mlflow_artifacts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        instance_yaml = self.dagster_home / "dagster.yaml"
        if not instance_yaml.exists():
            instance_yaml.write_text(DAGSTER_INSTANCE_YAML)
        # No hub is reachable by default; a user with network access sets HF_HUB_OFFLINE=0.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        return self


if __name__ == "__main__":
    settings = Settings.from_env().prepare()
    print(getattr(settings, sys.argv[1]) if len(sys.argv) > 1 else settings)
