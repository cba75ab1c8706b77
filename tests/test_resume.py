"""A `make run` killed with SIGKILL mid-training, then `make run` again on the same state: the dead
run is failed and its pool slot freed, training resumes from the last checkpoint (and says so), and
the final adapter matches an uninterrupted run with the same seed. Real processes, real signals, the
tiny model and the sample data.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pipelines.settings import REPO_ROOT

pytestmark = pytest.mark.integration

# Long enough to be killed midway, checkpointing every 10 steps; evaluation kept small.
PRESET = """\
# test preset: a long tiny-model training that checkpoints often
training:
  logging_steps: 5
  save_steps: 10
  sft:
    max_steps: 40
    per_device_train_batch_size: 4
    warmup_steps: 2
evaluation:
  max_eval_examples: 4
  max_new_tokens: 8
  batch_size: 4
  sample_rows: 4
gate:
  min_improvement: -1.0
  max_forgetting_pct: 1000.0
"""
MODEL = "resume-test"


def make_run(home: Path, preset: Path, base_model: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FT_HOME": str(home),
        "FT_BASE_MODEL": str(base_model),
        "FT_PRESET": str(preset),
        "FT_MODEL_NAME": MODEL,
        "PYTHONUNBUFFERED": "1",
    }
    # make run derives these from FT_HOME; other tests in this process may have set them
    for variable in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "FT_LANDING_DIR", "FT_RETRAIN_CRON"):
        env.pop(variable, None)
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.run"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the whole make run is killed
    )


def finished(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    return log.read_text()


def adapter(home: Path) -> dict:
    (path,) = home.glob("artifacts/fine_tuned_model/*/adapter/adapter_model.safetensors")
    return load_file(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("resume")
    preset = root / "long.yaml"
    preset.write_text(PRESET)
    whole, killed = root / "whole", root / "killed"
    reference = make_run(whole, preset, tiny_model_dir, root / "whole.log")

    victim = make_run(killed, preset, tiny_model_dir, root / "killed-1.log")
    deadline = time.time() + 600
    while not list(killed.glob("checkpoints/*/checkpoint-10/trainer_state.json")):
        assert victim.poll() is None, (root / "killed-1.log").read_text()[-4000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in killed.glob("checkpoints/*/checkpoint-*"))

    output = finished(make_run(killed, preset, tiny_model_dir, root / "killed-2.log"), root / "killed-2.log")
    whole_output = finished(reference, root / "whole.log")
    return {"whole": whole, "killed": killed, "output": output, "whole_output": whole_output, "killed_at": killed_at}


def test_the_killed_training_resumes_from_its_last_checkpoint(runs):
    output = runs["output"]
    assert "marked failed by make run, its pool slots freed" in output, "the dead run was released"
    step = int(output.split("Resuming sft training from its checkpoint at step ")[1].split()[0])
    assert 10 <= step <= runs["killed_at"] and step % 10 == 0
    assert f"train step {step + 5}/40" in output and "train step 40/40 (100%)" in output


def test_the_resumed_adapter_matches_an_uninterrupted_run(runs):
    resumed, whole = adapter(runs["killed"]), adapter(runs["whole"])
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert torch.allclose(resumed[name], whole[name], rtol=1e-4, atol=1e-6), name


def test_mlflow_and_dagster_record_the_resumption(runs):
    home = runs["killed"]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(MODEL, "challenger")
    run = client.get_run(version.run_id)
    assert int(run.data.tags["train.resumed_from_step"]) >= 10
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert steps[0] == 5 and steps[-1] == 40, "one run holds the curve from before and after the kill"
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        statuses = [r.status for r in instance.get_runs(filters=dg.RunsFilter(job_name="finetune"))]
    assert sorted(s.value for s in statuses) == ["FAILURE", "SUCCESS"]


def test_the_loss_curve_is_logged_while_training_not_at_the_end(runs):
    home = runs["whole"]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(MODEL, "challenger")
    history = client.get_metric_history(version.run_id, "train.loss")
    assert [m.step for m in history] == list(range(5, 41, 5))
    seconds = client.get_run(version.run_id).data.metrics["train.seconds"]
    span = (history[-1].timestamp - history[0].timestamp) / 1000
    assert span >= 0.5 * seconds, f"points span {span:.1f}s of a {seconds:.1f}s training"
