"""The Dagster Definitions: settings -> resources, the asset graph, its checks and jobs.

`dagster dev` (make dev) and `python -m pipelines.run` (make run) both load `defs` from here.
"""

import dagster as dg

from assets.base_model import base_model
from assets.fine_tuned_model import fine_tuned_model
from assets.instruction_pairs import instruction_pairs
from assets.model_evaluation import model_evaluation
from assets.raw_records import raw_records
from assets.registered_model import registered_model
from assets.validated_records import validated_records
from data_checks.pair_checks import train_eval_disjoint
from pipelines.presets import load_preset
from pipelines.settings import Settings
from resources.expectations import GreatExpectations
from resources.landing import LandingZone
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.state import StateStore

ASSETS = [
    base_model,
    raw_records,
    validated_records,
    instruction_pairs,
    fine_tuned_model,
    model_evaluation,
    registered_model,
]
CHECKS = [train_eval_disjoint]


def build_resources(settings: Settings) -> dict:
    return {
        # Asset values (frames, paths, small dicts) are pickled here, so any asset can be
        # re-materialized alone from what its upstream last stored.
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.home / "storage")),
        "state": StateStore(home=str(settings.home)),
        "landing": LandingZone(path=settings.landing_dir),
        "models": ModelLoader(base_model=settings.base_model),
        "gx": GreatExpectations(project_dir=str(settings.home / "gx")),
        "mlflow_registry": MlflowRegistry(
            tracking_uri=settings.mlflow_tracking_uri,
            artifact_root=str(settings.mlflow_artifacts_dir),
            model_name=settings.model_name,
        ),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    finetune = dg.define_asset_job(
        "finetune",
        selection=dg.AssetSelection.all(),
        config=load_preset(settings.preset),
        description=f"Raw data to a registered model, with preset '{settings.preset}' (FT_PRESET).",
    )
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[finetune],
        resources=build_resources(settings),
    )


defs = build_definitions(Settings.from_env().prepare())
