"""A `make run` killed mid-training leaves its run STARTED with a slot of the training pool: the next
`make run` fails that run, frees the slot, and waits (sleeping, saying for what) only for live runs."""

import os
import subprocess

import dagster as dg
import pytest

from pipelines.stale_runs import HOST_TAG, PID_TAG, TRAINING_POOL, process_tags, release_dead_runs, wait_for_pool


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(
        temp_dir=str(tmp_path), overrides={"concurrency": {"pools": {"default_limit": 1}}}
    ) as instance:
        yield instance


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def started_run(instance, tags: dict, step: str = "fine_tuned_model") -> str:
    run = instance.create_run_for_job(dg.GraphDefinition("finetune").to_job(), tags=tags)
    instance.handle_new_event(
        dg.EventLogEntry(
            error_info=None, level="debug", user_message="", run_id=run.run_id, timestamp=0.0,
            dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, "finetune"),
        )
    )  # fmt: skip
    # as the executor does before a step of the pool starts
    instance.event_log_storage.initialize_concurrency_limit_to_default(TRAINING_POOL)
    instance.event_log_storage.claim_concurrency_slot(TRAINING_POOL, run.run_id, step)
    return run.run_id


def holders(instance):
    return [s.run_id for s in instance.event_log_storage.get_concurrency_info(TRAINING_POOL).claimed_slots]


def test_a_run_whose_process_died_is_failed_and_frees_its_slot(instance):
    dead = started_run(instance, {**process_tags(), PID_TAG: str(dead_pid())})
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.STARTED and holders(instance) == [dead]
    (line,) = release_dead_runs(instance)
    assert dead in line and "is gone" in line
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert holders(instance) == []
    assert release_dead_runs(instance) == [], "released once"


def test_live_runs_and_runs_of_other_hosts_are_left_alone(instance):
    live = started_run(instance, process_tags())
    elsewhere = started_run(instance, {PID_TAG: str(dead_pid()), HOST_TAG: "another-host"}, step="model_evaluation")
    assert release_dead_runs(instance) == []
    assert {instance.get_run_by_id(r).status for r in (live, elsewhere)} == {dg.DagsterRunStatus.STARTED}


def test_waiting_for_the_pool_sleeps_and_says_what_it_waits_for(instance):
    live = started_run(instance, process_tags())
    said, sleeps = [], []

    def sleep(seconds):  # the holder finishes after the second nap
        sleeps.append(seconds)
        if len(sleeps) == 2:
            instance.event_log_storage.free_concurrency_slots_for_run(live)

    assert wait_for_pool(instance, said.append, poll_seconds=5.0, sleep=sleep) == 3
    assert sleeps == [5.0, 5.0]
    (line,) = said
    assert f"held by run {live} of job finetune (step fine_tuned_model, launched by make run, pid {os.getpid()}" in line


def test_a_dead_holder_does_not_make_anyone_wait(instance):
    started_run(instance, {**process_tags(), PID_TAG: str(dead_pid())})
    said = []
    assert wait_for_pool(instance, said.append, sleep=lambda s: pytest.fail("waited for a dead run")) == 1
    assert "is gone" in said[0]
