"""The asset side of a recipe: one way to launch every method's job.

    launched = launch_recipe(context, Recipe("dpo", training, examples, starts_from, identity), tools)

`launch_recipe` names the training setup (`setup_key`: same key, same training, so its checkpoints
may be resumed), finds the newest complete checkpoint a killed attempt left, writes the examples into
the setup's folder, opens the MLflow run the job reports to (the killed attempt's, the SFT stage's, or
a new one), launches the recipe's module through the `training_job` resource (a local process, torchrun
for `training.num_processes` > 1, or a pod of its own on Kubernetes) and reads its report. A failed job
fails the step with the job's own error. When the training has finished, its checkpoints go.
"""

import base64
import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from assets.domain.training import TrainingConfig
from assets.recipes.job import ERROR_FILE, RecipeJob, RecipeReport, write_examples
from resources.checkpoints import CheckpointStore
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.state import StateStore
from resources.training_job import TrainingJobClient

# The file in a setup's checkpoint folder naming the MLflow run its training reports to.
MLFLOW_RUN_FILE = "mlflow_run_id"
SETUP_KEY_CHARS = 16
# Settings that change how a training reports or checkpoints, not what it learns: not in its key.
NOT_IN_SETUP_KEY = ("logging_steps", "save_steps", "keep_checkpoints")


@dataclass(frozen=True)
class Recipe:
    """One stage to train: the method ('sft', 'dpo', 'grpo'), its settings and examples, the weights it
    starts from and what identifies them (the SFT stage's setup key, or the base model), its options."""

    method: str
    training: TrainingConfig
    examples: pd.DataFrame
    starts_from: str
    identity: dict[str, Any]
    """What decides the result besides the settings: the training data's hash and the starting weights."""
    options: dict[str, Any] = field(default_factory=dict)
    continues_run: str | None = None
    """The MLflow run to report to when this setup has none yet (the SFT stage's, for a second stage)."""
    parent_run: str | None = None
    """The MLflow run a new run of this setup is a child of (a sweep's parent run)."""

    @property
    def module(self) -> str:
        return f"assets.recipes.{self.method}"


@dataclass(frozen=True)
class RecipeTools:
    """The resources a launch uses (the asset's)."""

    models: ModelLoader
    state: StateStore
    checkpoints: CheckpointStore
    mlflow_registry: MlflowRegistry
    training_job: TrainingJobClient


@dataclass(frozen=True)
class Launched:
    """What a launched recipe trained, and where it reported."""

    report: RecipeReport
    setup_key: str
    mlflow_run_id: str
    resumed_from_step: int | None
    out_dir: Path


def setup_key(recipe: Recipe) -> str:
    """Names a training setup: the method, every setting that changes what it learns (the shared ones
    and its own section), its options and what it starts from. Same key, same training."""
    settings = {k: v for k, v in recipe.training.stage_settings(recipe.method).items() if k not in NOT_IN_SETUP_KEY}
    payload = {"stage": recipe.method, "settings": settings, "options": recipe.options, **recipe.identity}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{recipe.method}-{digest[:SETUP_KEY_CHARS]}"


@contextmanager
def tracked_training(registry: MlflowRegistry, folder: Path, dagster_run_id: str, resumed_from: int | None,
                     continues_run: str | None = None, prefix: str = "train",
                     parent_run: str | None = None):  # fmt: skip
    """The MLflow run a training reports to while it trains: the run of the killed attempt it resumes (its
    id is kept in the checkpoint folder), else `continues_run` (the SFT stage's), else a new one; so one run
    holds the whole curve of every stage. Registration later adds the evaluation to this same run."""
    marker = folder / MLFLOW_RUN_FILE
    candidates = [marker.read_text().strip() if marker.is_file() else None, continues_run]
    run_id = next((r for r in candidates if r and registry.run_exists(r)), None)
    tags = {"dagster.run_id": dagster_run_id}
    if parent_run and run_id is None:  # MLflow shows the run under its parent (a sweep's)
        tags["mlflow.parentRunId"] = parent_run
    if resumed_from is not None:
        tags[f"{prefix}.resumed_from_step"] = str(resumed_from)
    with registry.start_run(registry.training_run_name(dagster_run_id), tags=tags, run_id=run_id) as run:
        marker.write_text(run.run_id)
        yield run


def run_job(context, client: TrainingJobClient, module: str, job: RecipeJob, num_processes: int) -> RecipeReport:
    """Run a recipe's job through Dagster Pipes and return its report. A failed job fails this step
    with the job's own error (which it leaves in the checkpoint folder), not only its exit code."""
    error_file = job.folder / ERROR_FILE
    error_file.unlink(missing_ok=True)
    try:
        invocation = client.launch(context, module, num_processes, asdict(job))
    except Exception as failed:
        if error_file.is_file():
            raise RuntimeError(f"The training job failed: {error_file.read_text().strip()}") from failed
        raise
    reports = invocation.get_custom_messages()
    if not reports:
        raise RuntimeError(f"The training job ({module}) ended without reporting what it trained.")
    return RecipeReport.from_message(reports[-1])


def launch_recipe(context, recipe: Recipe, tools: RecipeTools, asset_name: str) -> Launched:
    """Train `recipe` as a job of its own, resuming a killed attempt of the same setup; its outputs under
    `FT_HOME/artifacts/<asset_name>/<run id>/`."""
    key = setup_key(recipe)
    resume, step = tools.checkpoints.last(key)
    if resume is not None:
        context.log.info(f"Resuming {recipe.method} training from its checkpoint at step {step} ({resume})")
    folder, out_dir = tools.checkpoints.folder(key), tools.state.asset_dir(asset_name, context.run.run_id)
    write_examples(recipe.examples, folder)
    run_id = context.run.run_id
    prefix = "train" if recipe.method == "sft" else recipe.method  # as its metrics are named
    with tracked_training(tools.mlflow_registry, folder, run_id, step, recipe.continues_run, prefix,
                          recipe.parent_run) as mlflow_run:  # fmt: skip
        job = RecipeJob(
            training=recipe.training.model_dump(), starts_from=recipe.starts_from, checkpoint_dir=str(folder),
            resume=resume and str(resume), resumed_from_step=step, out_dir=str(out_dir),
            state_home=tools.state.home, models=tools.models.model_dump(), mlflow=tools.mlflow_registry.model_dump(),
            mlflow_run_id=mlflow_run.run_id, options=recipe.options,
        )  # fmt: skip
        report = run_job(context, tools.training_job, recipe.module, job, recipe.training.num_processes)
    tools.checkpoints.finish(key)
    return Launched(report, key, mlflow_run.run_id, step, out_dir)


def curve_png(points: tuple[tuple[int, float], ...], label: str) -> bytes:
    """A logged series as a small PNG (step on x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def curve_markdown(points: tuple[tuple[int, float], ...], label: str) -> str:
    """A logged series for Dagster metadata: its plot inline, then its table."""
    png = base64.b64encode(curve_png(points, label)).decode()
    table = pd.DataFrame({"step": [s for s, _ in points], label: [v for _, v in points]}).to_markdown(index=False)
    return f"![{label}](data:image/png;base64,{png})\n\n{table}"
