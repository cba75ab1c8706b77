"""The environment, read once: every setting comes from an environment variable with a default.

Nothing else in the project reads `os.environ` for its own settings; `pipelines.definitions` turns a
`Settings` into the resource set. `python -m pipelines.settings NAME` prints one derived value, so
the Makefile and shell scripts agree with Python about where state lives.
"""

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from resources.credentials import has_password, masked
from resources.models import BUNDLED_BASE_MODEL

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LANDING = REPO_ROOT / "pipelines" / "sample_data" / "landing"
DEFAULT_MODEL_NAME = "ticket-triage"
DEFAULT_PRESET = "cpu"
DEFAULT_RETRAIN_CRON = "0 6 * * 1"
# Where `make mlflow-ui` and `make dev` serve their UIs: the links each tool shows to the other.
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
DEFAULT_DAGSTER_UI_URL = "http://127.0.0.1:3000"
# Where `make dev` serves the data quality pages (Data Docs, FT_HOME/gx/docs) that Dagster links to.
DEFAULT_DOCS_URL = "http://127.0.0.1:3030"


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

# FT_PROFILE=server: the same instance kept in PostgreSQL. Runs, event logs and schedules go to the
# database FT_POSTGRES_URL names, read from the environment whenever Dagster starts (the password is
# never written here), and runs wait in the daemon's queue (the queued run coordinator) under the
# same pools, so two retrains launched at once still train one after the other. Dagster reads the URL
# with its driver named (DAGSTER_POSTGRES_URL_ENV, set by `Settings.prepare`): SQLAlchemy 2.1 takes a
# bare postgresql:// to mean psycopg 3, and dagster-postgres is written for psycopg2.
DAGSTER_POSTGRES_URL_ENV = "FT_DAGSTER_POSTGRES_URL"
DAGSTER_SERVER_INSTANCE_YAML = (
    f"""\
storage:
  postgres:
    postgres_url:
      env: {DAGSTER_POSTGRES_URL_ENV}
run_coordinator:
  module: dagster._core.run_coordinator.queued_run_coordinator
  class: QueuedRunCoordinator
"""
    + DAGSTER_INSTANCE_YAML
)
PROFILES = ("local", "server")
LOOPBACK = "127.0.0.1"


def _number(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{name}={value!r} must be a whole number from 1 to 65535.")
    return int(value)


@dataclass(frozen=True)
class ServerProfile:
    """FT_PROFILE=server: Dagster's instance and MLflow's tracking server backed by PostgreSQL, each
    service a process of its own (`make server`, pipelines/server.py)."""

    postgres_url: str
    """FT_POSTGRES_URL: postgresql://user:password@host:port/database, the Dagster instance's database;
    MLflow's backend store is `mlflow_database` on the same server. Shown masked, never stored."""
    host: str = LOOPBACK
    """FT_HOST: the interface the services bind (loopback unless set, e.g. 0.0.0.0 behind a firewall)."""
    mlflow_port: int = 5000
    """FT_MLFLOW_PORT: the MLflow tracking server (its UI and REST API)."""
    dagster_port: int = 3000
    """FT_DAGSTER_PORT: the Dagster webserver (UI, GraphQL)."""
    code_server_port: int = 4000
    """FT_CODE_SERVER_PORT: the Dagster code server (gRPC) holding pipelines.definitions."""
    mlflow_database: str = "mlflow"
    """FT_MLFLOW_DATABASE: MLflow's database on the PostgreSQL server, created if missing."""
    mlflow_workers: int = 2
    """FT_MLFLOW_WORKERS: the tracking server's worker processes (enough for the UI and a run at once)."""
    mlflow_artifacts: str = ""
    """FT_MLFLOW_ARTIFACTS: where the tracking server keeps artifacts: a folder (default
    $FT_HOME/mlflow/artifacts) or an object-store URL (s3://bucket/prefix, with its driver installed)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={masked(repr(getattr(self, f.name)))}" for f in fields(self))
        return f"ServerProfile({shown})"

    @classmethod
    def from_env(cls, env: dict[str, str], home: Path) -> "ServerProfile":
        url = env.get("FT_POSTGRES_URL") or ""
        if not url:
            raise ValueError(
                "FT_PROFILE=server needs FT_POSTGRES_URL=postgresql://user:password@host:port/database "
                "(the PostgreSQL database for Dagster's runs; MLflow gets its own database on that server)."
            )
        if urlsplit(url).scheme not in ("postgresql", "postgresql+psycopg2"):
            raise ValueError(f"FT_POSTGRES_URL={masked(url)!r} must start with postgresql://")
        return cls(
            postgres_url=url,
            host=env.get("FT_HOST") or LOOPBACK,
            mlflow_port=_number(env, "FT_MLFLOW_PORT", 5000),
            dagster_port=_number(env, "FT_DAGSTER_PORT", 3000),
            code_server_port=_number(env, "FT_CODE_SERVER_PORT", 4000),
            mlflow_database=env.get("FT_MLFLOW_DATABASE") or "mlflow",
            mlflow_workers=_number(env, "FT_MLFLOW_WORKERS", 2),
            mlflow_artifacts=env.get("FT_MLFLOW_ARTIFACTS") or str(home / "mlflow" / "artifacts"),
        )

    def _url(self, scheme: str, database: str | None = None) -> str:
        parts = urlsplit(self.postgres_url)
        return parts._replace(scheme=scheme, path=f"/{database}" if database else parts.path).geturl()

    @property
    def libpq_url(self) -> str:
        """FT_POSTGRES_URL as libpq (psycopg2.connect, psql) takes it."""
        return self._url("postgresql")

    @property
    def dagster_storage_url(self) -> str:
        """FT_POSTGRES_URL for SQLAlchemy with the psycopg2 driver named (what dagster-postgres uses)."""
        return self._url("postgresql+psycopg2")

    @property
    def mlflow_backend_store_uri(self) -> str:
        """MLflow's database (`mlflow_database`) on the same server, user and options, for SQLAlchemy."""
        return self._url("postgresql+psycopg2", self.mlflow_database)

    @property
    def client_host(self) -> str:
        """Where clients on this machine reach the services (loopback when they bind every interface)."""
        return LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.client_host}:{self.mlflow_port}"


EXECUTORS = ("multiprocess", "k8s")


def executor_name(value: str) -> str:
    if value not in EXECUTORS:
        raise ValueError(f"FT_EXECUTOR={value!r} is not an executor. Available: {', '.join(EXECUTORS)}.")
    return value


TRAINING_LAUNCHERS = ("local", "k8s")


def training_launcher_name(value: str, tracking_uri: str) -> str:
    if value not in TRAINING_LAUNCHERS:
        raise ValueError(
            f"FT_TRAINING_LAUNCHER={value!r} is not a training launcher. Available: {', '.join(TRAINING_LAUNCHERS)} "
            "(local: the training job's processes beside the Dagster step; k8s: a Kubernetes pod of its own)."
        )
    if value == "k8s" and has_password(tracking_uri):
        # The job's settings travel in its pod's spec (the Pipes context), readable by whoever may read pods.
        raise ValueError(
            f"FT_TRAINING_LAUNCHER=k8s writes the MLflow tracking URI into the training pod's spec, and "
            f"MLFLOW_TRACKING_URI={masked(tracking_uri)!r} carries a password. Give the URI without it and put "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the Secret (ft-postgres) instead."
        )
    return value


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
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI_URL
    """FT_MLFLOW_UI_URL: the MLflow UI that Dagster's metadata links to (runs, model versions)."""
    dagster_ui_url: str = DEFAULT_DAGSTER_UI_URL
    """FT_DAGSTER_UI_URL: the Dagster UI that MLflow runs and versions link back to."""
    docs_url: str = DEFAULT_DOCS_URL
    """FT_DOCS_URL: where `make dev` serves the Data Docs (FT_HOME/gx/docs), linked from Dagster's metadata."""
    server: ServerProfile | None = None
    """FT_PROFILE=server: the PostgreSQL-backed services; None in the default, embedded profile."""
    trust_remote_code: bool = False
    """FT_TRUST_REMOTE_CODE=1: let the base model (FT_BASE_MODEL) run its own Python code, for an
    architecture transformers does not implement. Off: only transformers' own code runs."""
    executor: str = "multiprocess"
    """FT_EXECUTOR: how a run executes its steps: `multiprocess` (each step a process beside the run)
    or `k8s` (each step a Kubernetes pod sized by its asset's `dagster-k8s/config` tag; dagster-k8s)."""
    training_launcher: str = "local"
    """FT_TRAINING_LAUNCHER: where the training job runs: `local` (its processes beside the Dagster step,
    LocalTrainingJob) or `k8s` (a Kubernetes pod of its own with one GPU per process, KubernetesTrainingJob)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={masked(repr(getattr(self, f.name)))}" for f in fields(self))
        return f"Settings({shown})"

    @property
    def profile(self) -> str:
        """FT_PROFILE: `local` (sqlite MLflow, Dagster in a folder) or `server` (PostgreSQL)."""
        return "local" if self.server is None else "server"

    @property
    def links_url(self) -> str:
        """Where links between the UIs go (`pipelines/ui_links.py`): the links server `make dev` runs
        beside the Data Docs (FT_DOCS_URL), which sends each link on to wherever its UI runs when the
        link is opened; none in the server profile, whose UIs keep the ports its settings give them."""
        return self.docs_url if self.server is None else ""

    @property
    def instance_yaml(self) -> str:
        """The Dagster instance configuration for this profile ($FT_HOME/dagster/dagster.yaml)."""
        return DAGSTER_INSTANCE_YAML if self.server is None else DAGSTER_SERVER_INSTANCE_YAML

    @property
    def mlflow_client_artifact_root(self) -> str:
        """Where the pipeline puts an experiment's artifacts: a folder under FT_HOME, or "" to leave
        it to the tracking server (server profile: uploads go through the server to its store)."""
        return "" if self.server is not None else str(self.mlflow_artifacts_dir)

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
        profile = env.get("FT_PROFILE") or "local"
        if profile not in PROFILES:
            raise ValueError(f"FT_PROFILE={profile!r} is not a profile. Available: {', '.join(PROFILES)}.")
        server = ServerProfile.from_env(env, home) if profile == "server" else None
        default_tracking = server.tracking_uri if server else f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        tracking = env.get("MLFLOW_TRACKING_URI") or default_tracking
        return cls(
            home=home,
            landing_dir=env.get("FT_LANDING_DIR") or str(SAMPLE_LANDING),
            base_model=env.get("FT_BASE_MODEL") or BUNDLED_BASE_MODEL,
            model_name=env.get("FT_MODEL_NAME") or DEFAULT_MODEL_NAME,
            preset=env.get("FT_PRESET") or DEFAULT_PRESET,
            mlflow_tracking_uri=tracking,
            retrain_cron=env.get("FT_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON,
            mlflow_ui_url=env.get("FT_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL,
            dagster_ui_url=env.get("FT_DAGSTER_UI_URL") or DEFAULT_DAGSTER_UI_URL,
            docs_url=env.get("FT_DOCS_URL") or DEFAULT_DOCS_URL,
            server=server,
            trust_remote_code=(env.get("FT_TRUST_REMOTE_CODE") or "0").lower() in ("1", "true", "yes"),
            executor=executor_name(env.get("FT_EXECUTOR") or "multiprocess"),
            training_launcher=training_launcher_name(env.get("FT_TRAINING_LAUNCHER") or "local", tracking),
        )

    def prepare(self) -> "Settings":
        """Create the state folders and point Dagster at its home (it must exist and be absolute)."""
        for folder in (self.home, self.dagster_home, self.artifacts_dir, self.mlflow_artifacts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        if self.server is not None:
            os.environ[DAGSTER_POSTGRES_URL_ENV] = self.server.dagster_storage_url
        instance_yaml = self.dagster_home / "dagster.yaml"
        # Rewritten when it is the other profile's file (FT_PROFILE switched); kept when edited by hand.
        generated = (DAGSTER_INSTANCE_YAML, DAGSTER_SERVER_INSTANCE_YAML)
        if not instance_yaml.exists() or instance_yaml.read_text() in generated:
            instance_yaml.write_text(self.instance_yaml)
        # No hub is reachable by default; a user with network access sets HF_HUB_OFFLINE=0.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        return self


if __name__ == "__main__":
    settings = Settings.from_env().prepare()
    # Masked: what this prints lands in terminals, Makefile output and CI logs.
    print(masked(str(getattr(settings, sys.argv[1]) if len(sys.argv) > 1 else settings)))
