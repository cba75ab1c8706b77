"""Every method's recipe (`assets/recipes/`: SFT, DPO, GRPO) trains the same way: a job of its own launched
through Dagster Pipes, under torchrun for two processes, checkpointing every `save_steps`, and resuming
from its last checkpoint after its process is killed with SIGKILL. Real Dagster materializations of the
training assets, real processes and signals, the tiny Llama on a few tickets and preference pairs."""

import json
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from mlflow import MlflowClient

from assets.domain.values import PairsSummary
from assets.fine_tuned_model import fine_tuned_model
from assets.instruction_pairs import PAIRS_SCHEMA
from assets.preference_tuned_model import preference_tuned_model
from pipelines.definitions import build_resources
from resources.records import RecordWriter
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

TICKETS = [
    ("I was charged twice for PayFlow", "billing", "PayFlow"),
    ("RouterX keeps crashing after the update", "technical", "RouterX"),
    ("I cannot log in to CloudDrive", "account", "CloudDrive"),
    ("my Thermo has not arrived yet", "shipping", "Thermo"),
]
SHARED = {"logging_steps": 1, "precision": "fp32", "save_steps": 0}
# Each method's settings; the stage that trains it; and its setting of steps.
METHODS = {
    "sft": {"sft": {"max_steps": 4, "per_device_train_batch_size": 4, "warmup_steps": 0, "learning_rate": 1e-2}},
    "dpo": {"dpo": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3}},
    "grpo": {
        "grpo": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 8,
            "learning_rate": 1e-3,
        }
    },
}
STAGE = {"sft": "fine_tuned_model", "dpo": "preference_tuned_model", "grpo": "preference_tuned_model"}


def reply(category: str, product: str) -> str:
    return json.dumps({"category": category, "product": product})


def pairs_asset(folder: Path) -> dg.AssetsDefinition:
    """An `instruction_pairs` stand-in: the tickets as conversations and as preference pairs, all in train."""
    rows = []
    for i, (text, category, product) in enumerate(TICKETS * 2):
        prompt = [{"role": "user", "content": f"Triage: {text}"}]
        answer = {"role": "assistant", "content": reply(category, product)}
        rows.append({"example_id": f"s{i}", "kind": "sft", "messages": [*prompt, answer], "split": "train"})
        rows.append({"example_id": f"p{i}", "kind": "preference", "messages": prompt, "split": "train",
                     "chosen": reply(category, product), "rejected": reply("billing", "Beacon")})  # fmt: skip
    rows = [{**row, "n_tokens": 64} for row in rows]
    with RecordWriter(folder / "pairs.parquet", PAIRS_SCHEMA, ("tools",)) as out:
        out.write([{f.name: row.get(f.name) for f in PAIRS_SCHEMA} for row in rows])
    records = out.record_set(summary=PairsSummary(len(rows), 0, len(rows) // 2, 0, ("d1",), {}, "train", "eval"))

    @dg.asset(name="instruction_pairs")
    def pairs():
        return records

    return pairs


def training(method: str, **changes) -> dict:
    """The method's settings, with `changes` to its own section (and `shared` ones)."""
    shared = changes.pop("shared", {})
    section = {**METHODS[method][method], **changes}
    return {"method": method, **SHARED, **shared, method: section}


def materialize(home: Path, base: Path, settings: dict) -> dg.ExecuteInProcessResult:
    config = make_settings(home, str(base)).prepare()

    @dg.asset(name="base_model")
    def base_model():
        return str(base)

    assets = [base_model, pairs_asset(home), fine_tuned_model, preference_tuned_model]
    return dg.materialize(assets, resources=build_resources(config, {"training": settings}), raise_on_error=False)


def value(result, method: str):
    errors = [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    assert result.success, errors
    return result.output_for_node(STAGE[method]), result.asset_materializations_for_node(STAGE[method])[0].metadata


# SFT's: tests/test_distributed_training.py (the same losses and adapter as one process).
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_each_method_trains_under_torchrun_with_two_processes(method, tmp_path, tiny_model_dir):
    # Two processes of half the batch each: the same examples a step as one process of the whole batch.
    settings = training(method, per_device_train_batch_size=2, shared={"num_processes": 2})
    trained, metadata = value(materialize(tmp_path, tiny_model_dir, settings), method)
    assert metadata["world_size"].value == 2
    assert metadata["steps"].value == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(trained.mlflow_run_id)
    assert run.data.params["train.world_size"] == "2"
    prefix = "train" if method == "sft" else method
    assert [m.step for m in client.get_metric_history(run.info.run_id, f"{prefix}.loss")] == [1, 2, 3, 4]
    if method == "grpo":
        for metric in ("grpo.reward", "grpo.kl"):  # live, a point a step (beta 0.04: the KL is tracked)
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3, 4], metric
        assert [s for s, _ in trained.reinforcement.reward_curve] == [1, 2, 3, 4]
        # The random tiny model never answers in JSON: every answer scores 0, and the stage says so.
        assert all(reward == 0 for _, reward in trained.reinforcement.reward_curve)
        assert metadata["note"].value.startswith("GRPO had nothing to learn from: at every one of its 4 steps")
    assert len(list(tmp_path.glob(f"artifacts/{STAGE[method]}/*/adapter/adapter_model.safetensors"))) == 1


# Long enough that the job still trains when its first checkpoint (step 4) is written.
STEPS = 16


class KillAtCheckpoint(threading.Thread):
    """Waits for the first checkpoint of a `method` setup under `home`, then SIGKILLs the training job
    (the recipe's process, a child of this test's process) while it trains on."""

    def __init__(self, home: Path, method: str):
        super().__init__(daemon=True)
        self.home, self.method, self.killed_after = home, method, None

    def run(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            written = list(self.home.glob(f"checkpoints/{self.method}-*/checkpoint-*/trainer_state.json"))
            if written:
                for job in self.jobs():
                    job.kill()
                self.killed_after = [p.parent.name for p in written]
                return
            time.sleep(0.01)

    def jobs(self) -> list[psutil.Process]:
        found = []
        for process in psutil.Process().children(recursive=True):
            try:
                if f"assets.recipes.{self.method}" in " ".join(process.cmdline()):
                    found.append(process)
            except psutil.Error:  # a process that ended meanwhile
                continue
        return found


# SFT's: tests/test_resume.py (make run itself killed, and its adapter matching an uninterrupted run's).
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_a_job_killed_midway_resumes_from_its_last_checkpoint(method, tmp_path, tiny_model_dir):
    settings = training(method, max_steps=STEPS, shared={"save_steps": 4, "keep_checkpoints": 1})
    killer = KillAtCheckpoint(tmp_path, method)
    killer.start()
    first = materialize(tmp_path, tiny_model_dir, settings)
    killer.join()
    assert not first.success and killer.killed_after, "the job was killed before it finished"
    (failure,) = [e for e in first.all_events if e.is_step_failure]
    assert failure.step_key == STAGE[method]
    (left,) = tmp_path.glob(f"checkpoints/{method}-*")
    steps = sorted(int(p.name.split("-")[1]) for p in left.glob("checkpoint-*"))
    assert steps and steps[-1] < STEPS, "its checkpoints stay for the next attempt"

    again = materialize(tmp_path, tiny_model_dir, settings)
    trained, metadata = value(again, method)
    assert metadata["resumed_from_step"].value in steps
    assert metadata["steps"].value == STEPS, "it trained on to the end, not afresh"
    assert not left.exists(), "a finished training's checkpoints go"
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}").get_run(trained.mlflow_run_id)
    prefix = "train" if method == "sft" else method
    assert int(run.data.tags[f"{prefix}.resumed_from_step"]) >= 4
