"""The Dagster Definitions: settings -> resources, the asset graph, its checks, jobs, the landing
sensor, the retraining schedule and automation.

`dagster dev` (make dev) loads `defs` from here, and `python -m pipelines.run` (make run) calls
`build_definitions`. Nothing happens on import: `defs` reads the settings and prepares the state
folder only when Dagster loads it.
"""

import dagster as dg

from assets.base_model import base_model
from assets.champion_model import champion_model
from assets.domain.drops import DROPS
from assets.domain.sweep import SweepConfig
from assets.fine_tuned_model import fine_tuned_model, swept_fine_tuned_model
from assets.instruction_pairs import instruction_pairs
from assets.model_evaluation import model_evaluation
from assets.preference_tuned_model import preference_tuned_model
from assets.raw_records import raw_records
from assets.registered_model import registered_model
from assets.training_preview import training_preview
from assets.validated_records import validated_records
from data_checks.pair_checks import personal_data_scan, train_eval_disjoint
from pipelines.pod_resources import (
    GPU_NODE_SELECTOR,
    GPU_POD_LIMITS,
    GPU_POD_REQUESTS,
    GPU_RESOURCE,
    GPU_TOLERATIONS,
    step_pods,
)
from pipelines.presets import stage_resources
from pipelines.retraining import build_landing_sensor, build_retrain_schedule, retrain_automation
from pipelines.settings import REPO_ROOT, Settings
from resources.checkpoints import CheckpointStore
from resources.credentials import has_password
from resources.expectations import GreatExpectations
from resources.k8s_training_job import KubernetesTrainingJob
from resources.landing import LandingZone
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.state import StateStore
from resources.training_job import LocalTrainingJob, TrainingJobClient

ASSETS = [
    base_model,
    raw_records,
    validated_records,
    instruction_pairs,
    training_preview,
    fine_tuned_model,
    preference_tuned_model,
    model_evaluation,
    registered_model,
    champion_model,
]
CHECKS = [train_eval_disjoint, personal_data_scan]

base_model_job = dg.define_asset_job(
    "prepare_base_model", selection=dg.AssetSelection.assets(base_model), description="The base model folder."
)
ingest_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_records, validated_records),
    partitions_def=DROPS,
    description="One data drop: read, validate (Great Expectations), split into validated and rejected rows.",
)
training_data_job = dg.define_asset_job(
    "training_data",
    selection=dg.AssetSelection.assets(base_model, instruction_pairs, training_preview),
    description="The chat examples of every validated drop, split, with a preview of the first training examples "
    "as the model will see them (make preview); no training.",
)
finetune_job = dg.define_asset_job(
    "finetune",
    selection=dg.AssetSelection.assets(
        base_model,
        instruction_pairs,
        training_preview,
        fine_tuned_model,
        preference_tuned_model,
        model_evaluation,
        registered_model,
        champion_model,
    ),
    description="All validated drops to a registered model: format, train (SFT, then DPO when the method has it), "
    "evaluate, register, promote.",
)


def training_job(settings: Settings) -> TrainingJobClient:
    """FT_TRAINING_LAUNCHER: the training job's processes beside the Dagster step (`local`), or a
    Kubernetes pod of its own on a GPU node, one GPU per process, FT_HOME's volume at the same path (`k8s`)."""
    if settings.training_launcher != "k8s":
        return LocalTrainingJob(cwd=str(REPO_ROOT))
    return KubernetesTrainingJob(
        home_path=str(settings.home),
        gpu_resource=GPU_RESOURCE,
        node_selector=GPU_NODE_SELECTOR,
        tolerations=GPU_TOLERATIONS,
        requests=GPU_POD_REQUESTS,
        limits=GPU_POD_LIMITS,
    )


def build_resources(settings: Settings, overrides: dict[str, dict] | None = None) -> dict:
    return {
        # Asset values (frames, paths, small dicts) are pickled here, so any asset can be
        # re-materialized alone from what its upstream last stored.
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.home / "storage")),
        "state": StateStore(home=str(settings.home)),
        "landing": LandingZone(path=settings.landing_dir),
        "models": ModelLoader(base_model=settings.base_model, trust_remote_code=settings.trust_remote_code),
        "checkpoints": CheckpointStore(root=str(settings.home / "checkpoints")),
        # Training runs as its own job (torchrun for training.num_processes > 1) through Dagster Pipes.
        "training_job": training_job(settings),
        "gx": GreatExpectations(project_dir=str(settings.home / "gx"), docs_url=settings.docs_url),
        "mlflow_registry": MlflowRegistry(
            # A URI with a password is read from the environment when the run starts, so the UI
            # (Deployment -> Resources) shows the variable's name, never the password.
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")
            if has_password(settings.mlflow_tracking_uri)
            else settings.mlflow_tracking_uri,
            artifact_root=settings.mlflow_client_artifact_root,
            model_name=settings.model_name,
            ui_url=settings.mlflow_ui_url,
            dagster_ui_url=settings.dagster_ui_url,
            links_url=settings.links_url,
        ),
        **stage_resources(settings.preset, overrides),
    }


def run_executor(settings: Settings, sweep: bool = False) -> dg.ExecutorDefinition | None:
    """FT_EXECUTOR=k8s: every step in a Kubernetes pod of its own, sized per step (`pod_resources.step_pods`:
    a GPU for training, a sweep's points included, and evaluation, CPU for the data stages); else Dagster's default."""
    if settings.executor != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(
        {"per_step_k8s_config": step_pods(settings.training_launcher, sweep)}, name="k8s_job_executor"
    )


def model_assets(sweep: SweepConfig) -> list:
    """ASSETS, with `fine_tuned_model` as a sweep (same key, inputs and group: one step per point, the best
    point its value) when the preset's `sweep` section names parameters."""
    if not sweep.parameters:
        return ASSETS
    return [swept_fine_tuned_model if asset is fine_tuned_model else asset for asset in ASSETS]


def build_definitions(settings: Settings, overrides: dict[str, dict] | None = None) -> dg.Definitions:
    """Everything Dagster loads. `overrides` (stage -> values) go over the preset, for tests and scripts."""
    resources = build_resources(settings, overrides)
    return dg.Definitions(
        assets=model_assets(resources["sweep"]),
        asset_checks=CHECKS,
        jobs=[base_model_job, ingest_job, training_data_job, finetune_job],
        sensors=[build_landing_sensor(ingest_job, base_model_job), retrain_automation],
        schedules=[build_retrain_schedule(finetune_job, settings.retrain_cron)],
        resources=resources,
        executor=run_executor(settings, sweep=bool(resources["sweep"].parameters)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions for the settings in the environment (FT_HOME, FT_PRESET, ...)."""
    return build_definitions(Settings.from_env().prepare())
