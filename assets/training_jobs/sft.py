"""The SFT training job of `fine_tuned_model`, in its own process(es), launched through Dagster Pipes:

    python -m assets.training_jobs.sft                                          # one process
    torchrun --standalone --nproc-per-node=N -m assets.training_jobs.sft        # N processes, DDP

It reads what to do from the Pipes context's extras (`SftJob`: settings, paths, the MLflow run),
trains with `train_adapter`, the same function an in-process training calls, and exits. Under
torchrun every process (rank) trains on its own shard of each batch and the Trainer averages their
gradients (DDP; gloo on a CPU, NCCL on GPUs). Rank 0 alone talks: it opens the Pipes message channel
(the progress lines reach the Dagster run's log), logs to the MLflow run, saves the adapter and the
merged model, and reports what it trained (`SftReport`, a Pipes custom message). Any rank that fails
writes its error into the checkpoint folder, where the asset reads it to fail its step with it.
"""

import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from assets.domain.training import TrainingConfig
from assets.fine_tuned_model import (
    JOB_ERROR_FILE,
    Checkpoints,
    SftJob,
    SftReport,
    read_examples,
    save_models,
    train_adapter,
)
from resources.mlflow_registry import MlflowRegistry
from resources.models import ModelLoader
from resources.state import StateStore
from resources.training_job import watch_parent
from resources.training_tracking import live_tracking


def rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def job_extras() -> dict:
    """The extras the asset sent, read from the Pipes context (any rank may read it)."""
    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data["extras"])


def use_own_gpu() -> None:
    """Under torchrun on a GPU machine, each rank computes on the GPU of its local rank."""
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


@contextmanager
def tracked_run(job: SftJob):
    """Rank 0: the asset's MLflow run, continued here so the curves grow as it trains. Others: None."""
    if rank() != 0:
        yield None
        return
    with MlflowRegistry(**job.mlflow).start_run(run_name="", tags={}, run_id=job.mlflow_run_id) as run:
        run.log_params({"train.world_size": str(world_size())})
        yield run


def train_and_save(job: SftJob, say) -> SftReport | None:
    """Train; rank 0 saves the adapter and the merged model and returns the report (others: None)."""
    training, models, folder = TrainingConfig(**job.training), ModelLoader(**job.models), Path(job.checkpoint_dir)
    resume = Path(job.resume) if job.resume else None
    with tracked_run(job) as run:
        callback = live_tracking(run, say, training.max_steps) if run is not None else None
        result = train_adapter(
            training, job.base_model, read_examples(folder), models,
            Checkpoints(folder, resume, job.resumed_from_step, callback),
        )  # fmt: skip
    if rank() != 0:
        return None
    state = StateStore(home=job.state_home)
    adapter_dir, merged_dir = save_models(result, Path(job.out_dir), state, models, job.base_model)
    return SftReport(
        steps=result.trainer.state.global_step,
        train_loss=result.train_loss,
        seconds=result.seconds,
        loss_curve=tuple(result.loss_curve),
        tokens=result.tokens,
        world_size=world_size(),
        device=models.resolved_device(),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        merged_dir=str(merged_dir),
    )


def main() -> None:
    extras = job_extras()
    watch_parent(extras)
    use_own_gpu()
    job = SftJob.from_extras(extras)
    try:
        with open_dagster_pipes() if rank() == 0 else nullcontext() as pipes:
            report = train_and_save(job, pipes.log.info if pipes is not None else print)
            if pipes is not None:
                pipes.report_custom_message(asdict(report))
    except Exception as error:
        with (Path(job.checkpoint_dir) / JOB_ERROR_FILE).open("a") as out:
            out.write(f"{'' if world_size() == 1 else f'rank {rank()}: '}{type(error).__name__}: {error}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
