"""`fine_tuned_model` trains in its own process(es) through Dagster Pipes: one process, or two under
torchrun (DDP over gloo on the CPU) with the per-device batch halved, so the batch per step is the
same. Both ranks train on their own half of each batch (the loss and tokens of every step match the
single process; with batches bounded by tokens, each rank trains whole batches of its own), rank 0
alone saves the adapter, MLflow records the world size, and a job that fails fails the Dagster step
with its own error. A job whose launching process dies stops too. Real processes, a real Dagster
materialization, the tiny Llama."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.values import PairsSummary
from assets.fine_tuned_model import fine_tuned_model
from assets.instruction_pairs import PAIRS_SCHEMA
from assets.recipes.job import ERROR_FILE
from pipelines.definitions import build_resources
from pipelines.settings import REPO_ROOT
from resources.models import ModelLoader
from resources.records import RecordWriter
from resources.training_job import job_command
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

TICKETS = [
    ("I was charged twice for PayFlow", "billing", "PayFlow"),
    ("RouterX keeps crashing after the update", "technical", "RouterX"),
    ("I cannot log in to CloudDrive", "account", "CloudDrive"),
    ("my Thermo has not arrived yet", "shipping", "Thermo"),
    ("Please add dark mode to PayFlow", "feature_request", "PayFlow"),
    ("CloudDrive sync is stuck at 99%", "technical", "CloudDrive"),
    ("Refund the duplicate Thermo order", "billing", "Thermo"),
    ("RouterX password reset mail never came", "account", "RouterX"),
]
# Four steps; one process takes batches of 4, two processes take 2 each: the same 4 examples a step.
TRAINING = {
    "method": "sft",
    "logging_steps": 1,
    "save_steps": 0,
    "precision": "fp32",
    "sft": {"max_steps": 4, "warmup_steps": 0, "learning_rate": 1e-2},
}


def ticket_examples() -> list[tuple[list[dict], int]]:
    """The tickets (two epochs' worth a run), each with a bound on its tokens."""
    return [
        (
            [
                {"role": "user", "content": f"Triage: {text}"},
                {"role": "assistant", "content": f'{{"category": "{category}", "product": "{product}"}}'},
            ],
            64,
        )
        for text, category, product in TICKETS * 2
    ]


def write_pairs(folder: Path, examples: list[tuple[list[dict], int]] | None = None) -> dg.AssetsDefinition:
    """An `instruction_pairs` stand-in: the examples, (messages, tokens), as the train split (default: the tickets)."""
    rows = [
        {"example_id": str(i), "kind": "sft", "messages": messages, "split": "train", "n_tokens": n_tokens}
        for i, (messages, n_tokens) in enumerate(examples or ticket_examples())
    ]
    with RecordWriter(folder / "pairs.parquet", PAIRS_SCHEMA, ("tools",)) as out:
        out.write([{f.name: row.get(f.name) for f in PAIRS_SCHEMA} for row in rows])
    summary = PairsSummary(len(rows), 0, 0, 0, ("d1",), {}, "train-hash", "eval-hash")
    records = out.record_set(summary=summary)

    @dg.asset(name="instruction_pairs")
    def pairs():
        return records

    return pairs


def materialize(home: Path, base: Path, training: dict, examples: list[tuple[list[dict], int]] | None = None):
    settings = make_settings(home, str(base)).prepare()

    @dg.asset(name="base_model")
    def base_model():
        return str(base)

    sft = {**TRAINING["sft"], **training.get("sft", {})}
    resources = build_resources(settings, {"training": {**TRAINING, **training, "sft": sft}})
    assets = [base_model, write_pairs(home, examples), fine_tuned_model]
    return settings, dg.materialize(assets, resources=resources, raise_on_error=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("distributed")
    one = materialize(root / "one", tiny_model_dir, {"num_processes": 1, "sft": {"per_device_train_batch_size": 4}})
    two = materialize(root / "two", tiny_model_dir, {"num_processes": 2, "sft": {"per_device_train_batch_size": 2}})
    return {"one": one, "two": two}


def trained(run):
    settings, result = run
    assert result.success, [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    return settings, result.output_for_node("fine_tuned_model"), result


def test_two_processes_train_the_same_batches_as_one(runs):
    _, single, _ = trained(runs["one"])
    _, double, result = trained(runs["two"])
    assert [s for s, _ in double.loss_curve] == [1, 2, 3, 4] == [s for s, _ in single.loss_curve]
    for (_, a), (_, b) in zip(single.loss_curve, double.loss_curve):
        # Each rank's loss covers its own two examples; had both ranks trained on the same shard,
        # the first step's loss would be that of two examples, not of the single process's four.
        assert b == pytest.approx(a, rel=2e-3), (single.loss_curve, double.loss_curve)
    metadata = result.asset_materializations_for_node("fine_tuned_model")[0].metadata
    assert metadata["world_size"].value == 2 and metadata["steps"].value == 4
    assert single.settings["num_processes"] == 1 and double.settings["num_processes"] == 2


def mixed_examples(model_dir: Path) -> list[tuple[list[dict], int]]:
    """14 short conversations and 2 of about 900 tokens, with their true token counts."""
    tokenizer = ModelLoader().load_tokenizer(str(model_dir))
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    words = [5 + i for i in range(14)] + [870, 880]
    random.Random(0).shuffle(words)
    conversations = [
        [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": "word " * w}]
        for i, w in enumerate(words)
    ]
    return [(m, len(training_tokens(tokenizer, m, None, template)["input_ids"])) for m in conversations]


def test_two_processes_deal_out_batches_bounded_by_tokens(tmp_path, tiny_model_dir):
    """Batches bounded by tokens (8 rows or 1,024 padded tokens; the short rows in batches of 8 and 6,
    each long one alone: 4 batches an epoch) under torchrun: accelerate deals whole batches to the
    processes in turn, so two processes train, per step, the two batches one process accumulates
    (gradient_accumulation_steps 2), epoch after epoch: the same losses."""
    examples = mixed_examples(tiny_model_dir)
    bounded = {"per_device_train_batch_size": 8, "group_by_length_min_padding": 0.0}
    accumulated = {"max_batch_tokens": 1024, "sft": {**bounded, "gradient_accumulation_steps": 2}}
    one = materialize(tmp_path / "one", tiny_model_dir, accumulated, examples)
    two = materialize(
        tmp_path / "two", tiny_model_dir, {"max_batch_tokens": 1024, "num_processes": 2, "sft": bounded}, examples
    )
    (_, single, _), (_, double, _) = trained(one), trained(two)
    assert [s for s, _ in double.loss_curve] == [1, 2, 3, 4] == [s for s, _ in single.loss_curve], "two epochs"
    for (_, a), (_, b) in zip(single.loss_curve, double.loss_curve):
        assert b == pytest.approx(a, rel=2e-3), (single.loss_curve, double.loss_curve)


def test_rank_zero_saves_one_adapter_close_to_the_single_process_one(runs):
    _, single, _ = trained(runs["one"])
    settings, double, _ = trained(runs["two"])
    assert len(list(settings.home.glob("artifacts/fine_tuned_model/*/adapter/adapter_model.safetensors"))) == 1
    assert Path(double.merged_dir, "model.safetensors").is_file()
    a = load_file(Path(single.adapter_dir) / "adapter_model.safetensors")
    b = load_file(Path(double.adapter_dir) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max() < 1e-3 for k in a), "DDP averaged the same gradients"


def test_mlflow_records_the_world_size_and_the_live_curve(runs):
    for name, size in (("one", "1"), ("two", "2")):
        settings, model, _ = trained(runs[name])
        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        run = client.get_run(model.mlflow_run_id)
        assert run.data.params["train.world_size"] == size
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")] == [1, 2, 3, 4]


def test_a_failing_job_fails_the_step_with_its_own_error(tmp_path, tiny_model_dir):
    _, result = materialize(tmp_path, tiny_model_dir, {"adapter": "qlora", "num_processes": 1})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error, messages = failure.step_failure_data.error, []
    while error is not None:
        messages, error = messages + [error.message], error.cause
    message = "\n".join(messages)
    assert "The training job failed: ValueError: training.adapter 'qlora'" in message, message
    assert list(tmp_path.glob(f"checkpoints/*/{ERROR_FILE}"))


def test_more_processes_run_under_torchrun_one_alone_under_python():
    assert job_command("py", "m.job", 1) == ["py", "-m", "m.job"]
    assert job_command("py", "m.job", 4)[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in job_command("py", "m.job", 4) and job_command("py", "m.job", 4)[-2:] == [
        "-m",
        "m.job",
    ]


CHILD = """
import sys, time
from resources.training_job import watch_parent
watch_parent({"parent_pid": int(sys.argv[1])}, poll=0.1)
time.sleep(120)
"""
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_job_stops_when_the_process_that_launched_it_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert psutil.pid_exists(child), "the job runs while its parent lives"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the job outlived the process that launched it"
        time.sleep(0.1)
