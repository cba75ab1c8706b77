"""Runs whose process died, and waiting for the `training` pool without spinning.

`make run` executes its jobs in its own process. If that process is killed (SIGKILL, a closed
terminal, an OOM kill), Dagster never hears of it: the run stays STARTED and keeps its slot in the
`training` pool, and the next run would wait for it forever. So `make run` tags each run with its
process id and host, and before it starts it marks the runs whose process is gone as failed and
frees their slots. Runs launched by the daemon (`make dev`) are watched by Dagster's own run
monitoring (enabled in the instance's dagster.yaml).
"""

import os
import socket
import time
from collections.abc import Callable

import dagster as dg

from resources.processes import alive

PID_TAG = "ft/pid"
HOST_TAG = "ft/host"
TRAINING_POOL = "training"
ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def process_tags() -> dict[str, str]:
    """Tags naming this process, for every run `make run` executes."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Active runs started by a `make run` process on this host that no longer exists."""
    host = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE))
    return [r for r in runs if r.tags.get(HOST_TAG) == host and r.tags.get(PID_TAG) and not alive(int(r.tags[PID_TAG]))]


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark each dead run failed and free its concurrency slots; returns what was done, in words."""
    released = []
    for run in dead_runs(instance):
        pid = run.tags[PID_TAG]
        message = f"its process {pid} is gone (killed or crashed); marked failed by make run"
        instance.report_run_failed(run, message=f"Run {run.run_id} ({run.job_name}): {message}.")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(f"Run {run.run_id} ({run.job_name}) {message}, its pool slots freed.")
    return released


def pool_holders(instance: dg.DagsterInstance, pool: str = TRAINING_POOL) -> list[tuple[str, str]]:
    """(run id, step) of each claimed slot of `pool`."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    return [(slot.run_id, slot.step_key) for slot in info.claimed_slots]


def describe_holder(instance: dg.DagsterInstance, run_id: str, step: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} (step {step}), which is no longer in the instance"
    how = f"make run, pid {run.tags[PID_TAG]}" if PID_TAG in run.tags else "the Dagster daemon or UI"
    return f"run {run_id} of job {run.job_name} (step {step}, launched by {how}, status {run.status.value})"


def wait_for_pool(
    instance: dg.DagsterInstance,
    say: Callable[[str], None] = print,
    pool: str = TRAINING_POOL,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until no live run holds a slot of `pool`, sleeping between checks (no busy wait) and
    saying once what it waits for; dead holders are released on the way. Returns the checks made."""
    checks, told = 0, set()
    while True:
        checks += 1
        for line in release_dead_runs(instance):
            say(line)
        holders = pool_holders(instance, pool)
        if not holders:
            return checks
        for run_id, step in holders:
            if run_id not in told:
                say(f"Waiting for the '{pool}' pool: it is held by {describe_holder(instance, run_id, step)}.")
                told.add(run_id)
        sleep(poll_seconds)
