"""What every recipe's job shares: its settings and report (what crosses Dagster Pipes), and the process
side of the job.

The asset (through `launch.py`) writes the examples into the setup's checkpoint folder and sends a
`RecipeJob` as the Pipes context's extras; the recipe's process reads it back (`recipe_main`), trains,
and rank 0 sends a `RecipeReport` as a Pipes custom message. Under torchrun every process (rank)
trains on its own shard of each batch and the Trainer averages their gradients (DDP; gloo on a CPU,
NCCL on GPUs). Rank 0 alone talks: it opens the Pipes message channel (its progress lines reach the
Dagster run's log), logs to the MLflow run, saves the adapter and the merged model and reports. Any
rank that fails writes its error into the checkpoint folder, where the asset reads it to fail its step with it.
"""

import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from assets.domain.training import TrainingConfig
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.state import StateStore
from resources.training_job import watch_parent

# Files a job shares with its asset in the setup's checkpoint folder: its examples, and its error if it fails.
EXAMPLES_FILE = "examples.jsonl"
ERROR_FILE = "job_error.txt"


@dataclass(frozen=True)
class RecipeJob:
    """What a recipe's job is told, as Pipes extras: the settings, the weights it starts from, where its
    examples, checkpoints and outputs are, and the MLflow run it reports to."""

    training: dict[str, Any]
    starts_from: str
    """The folder (or hub id) of the weights training starts from: the base model, or the SFT model."""
    checkpoint_dir: str
    resume: str | None
    resumed_from_step: int | None
    out_dir: str
    state_home: str
    models: dict[str, Any]
    mlflow: dict[str, Any]
    mlflow_run_id: str
    options: dict[str, Any] = field(default_factory=dict)
    """What one recipe needs beside the settings (GRPO: the task and evaluation's answer pattern)."""

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> "RecipeJob":
        return cls(**{f.name: extras[f.name] for f in fields(cls) if f.name in extras})

    @property
    def config(self) -> TrainingConfig:
        return TrainingConfig(**self.training)

    @property
    def folder(self) -> Path:
        return Path(self.checkpoint_dir)


@dataclass(frozen=True)
class RecipeReport:
    """What a job reports when it has trained and saved (a Pipes custom message)."""

    steps: int
    train_loss: float
    seconds: float
    loss_curve: tuple[tuple[int, float], ...]
    tokens: int
    world_size: int
    device: str
    adapter_dir: str | None
    merged_dir: str
    last: dict[str, float] = field(default_factory=dict)
    """The last logged value of each tracked metric (DPO's reward accuracy, GRPO's reward and KL)."""
    curves: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    """Other logged series by name, as (step, value) (GRPO's reward)."""
    validation_curve: tuple[tuple[int, float], ...] = ()
    """(step, loss on the validation slice) at each validation (SFT with training.sft.validation_fraction)."""
    best_step: int | None = None
    """The step of the checkpoint saved as the model: the lowest validation loss (None without validation)."""
    best_validation_loss: float | None = None
    stopped_early: bool = False
    """Whether early stopping ended the training before max_steps (at `steps`)."""

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "RecipeReport":
        def series(points) -> tuple[tuple[int, float], ...]:
            return tuple((int(step), float(value)) for step, value in points)

        curves = {name: series(points) for name, points in message.get("curves", {}).items()}
        validation = series(message.get("validation_curve", ()))
        return cls(
            **{**message, "loss_curve": series(message["loss_curve"]), "curves": curves, "validation_curve": validation}
        )


def write_examples(examples: pd.DataFrame, folder: Path) -> None:
    """The job's examples, one JSON object a line (conversations and tool schemas keep their shape)."""
    with (folder / EXAMPLES_FILE).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in examples.to_dict("records"))


def read_examples(folder: Path) -> pd.DataFrame:
    with (folder / EXAMPLES_FILE).open(encoding="utf-8") as lines:
        return pd.DataFrame([json.loads(line) for line in lines])


@dataclass
class Trained:
    """What one trainer.train() left behind, before its outputs are saved."""

    trainer: Any
    tokenizer: Any
    train_loss: float
    seconds: float

    @property
    def history(self) -> list[dict]:
        return [h for h in self.trainer.state.log_history if "loss" in h]

    def curve(self, key: str = "loss") -> tuple[tuple[int, float], ...]:
        return tuple((h["step"], float(h[key])) for h in self.history if key in h)

    def validation_curve(self) -> tuple[tuple[int, float], ...]:
        """(step, validation loss) at each validation."""
        return tuple((h["step"], float(h["eval_loss"])) for h in self.trainer.state.log_history if "eval_loss" in h)

    def best(self) -> tuple[int | None, float | None]:
        """The step and validation loss of the checkpoint loaded at the end as the model (load_best_model_at_end),
        or (None, None) when no best checkpoint was kept (no validation)."""
        state = self.trainer.state
        if not self.trainer.args.load_best_model_at_end or state.best_model_checkpoint is None:
            return None, None
        return int(Path(state.best_model_checkpoint).name.removeprefix("checkpoint-")), float(state.best_metric)

    @property
    def stopped_early(self) -> bool:
        """Whether a callback (early stopping) ended the training before max_steps."""
        return self.trainer.state.global_step < self.trainer.state.max_steps

    def last(self, keys: dict[str, str]) -> dict[str, float]:
        """The last logged value of each log key in `keys`, under its name there."""
        return {
            name: float(self.history[-1][key]) for key, name in keys.items() if self.history and key in self.history[-1]
        }


def train_timed(trainer, tokenizer, resume: Path | None) -> Trained:
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return Trained(trainer, tokenizer, float(result.training_loss), time.time() - started)


def save_models(trained: Trained, job: RecipeJob, models: ModelLoader) -> tuple[str | None, str]:
    """The adapter (none for adapter 'full') and a plain model for serving (the adapter merged into the
    weights it started from, or the fully trained weights), each written atomically under the job's out_dir."""
    model, out_dir = trained.trainer.model, Path(job.out_dir)
    adapter_dir = out_dir / "adapter" if hasattr(model, "peft_config") else None
    merged_dir = out_dir / "merged"
    state = StateStore(home=job.state_home)
    models.save_trained(
        model, trained.tokenizer, adapter_dir, merged_dir, state.atomic_dir, starts_from=job.starts_from
    )
    return (str(adapter_dir) if adapter_dir else None), str(merged_dir)


def report(trained: Trained, job: RecipeJob, models: ModelLoader, **extra) -> RecipeReport:
    """Rank 0: save the trained model and say what was trained."""
    adapter_dir, merged_dir = save_models(trained, job, models)
    history = trained.history
    tokens = trained.trainer.state.num_input_tokens_seen or (history[-1].get("num_tokens", 0) if history else 0)
    best_step, best_loss = trained.best()
    return RecipeReport(
        steps=trained.trainer.state.global_step,
        train_loss=trained.train_loss,
        seconds=trained.seconds,
        loss_curve=trained.curve(),
        tokens=int(tokens),
        world_size=world_size(),
        device=models.resolved_device(),
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        validation_curve=trained.validation_curve(),
        best_step=best_step,
        best_validation_loss=best_loss,
        stopped_early=trained.stopped_early,
        **extra,
    )


def rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def job_extras() -> dict:
    """The extras the asset sent, read from the Pipes context (any rank may read it)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data["extras"])


def use_own_gpu() -> None:
    """Under torchrun on a GPU machine, each rank computes on the GPU of its local rank."""
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


@contextmanager
def tracked_run(job: RecipeJob):
    """Rank 0: the asset's MLflow run, continued here so the curves grow as it trains. Others: None."""
    if rank() != 0:
        yield None
        return
    with MlflowRegistry(**job.mlflow).start_run(run_name="", tags={}, run_id=job.mlflow_run_id) as run:
        run.log_params({"train.world_size": str(world_size())})
        yield run


# A recipe's train-and-save: (the job, where progress lines go, the MLflow run or None) -> its report
# (rank 0) or None (the other ranks).
TrainAndSave = Callable[[RecipeJob, Callable[[str], None], Any], RecipeReport | None]


def recipe_main(train_and_save: TrainAndSave) -> None:
    """A recipe's process entry point: read the job, stop with the process that launched it, train,
    and (rank 0) report through Pipes. An error is left in the checkpoint folder for the asset."""
    from dagster_pipes import open_dagster_pipes

    extras = job_extras()
    watch_parent(extras)
    use_own_gpu()
    job = RecipeJob.from_extras(extras)
    try:
        with open_dagster_pipes() if rank() == 0 else nullcontext() as pipes:
            say = pipes.log.info if pipes is not None else print
            with tracked_run(job) as run:
                result = train_and_save(job, say, run)
            if pipes is not None:
                pipes.report_custom_message(asdict(result))
    except Exception as error:
        with (job.folder / ERROR_FILE).open("a") as out:
            out.write(f"{'' if world_size() == 1 else f'rank {rank()}: '}{type(error).__name__}: {error}\n")
        raise
