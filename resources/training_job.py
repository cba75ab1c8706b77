"""Training in its own process(es), launched and followed through Dagster Pipes.

An asset hands a training job (a module runnable with `python -m`) its settings as Pipes extras and
gets back, while it runs, the job's log lines and, when it ends, its report (a Pipes custom message):

    invocation = training_job.launch(context, "assets.recipes.sft", num_processes=2, extras={...})
    report = invocation.get_custom_messages()[-1]

One process runs `python -m MODULE`; more run it under `torchrun` (torch.distributed.run), one
process per device, data-parallel. The launcher is a resource so that a deployment can swap it:
`LocalTrainingJob` runs the processes beside the Dagster step (PipesSubprocessClient);
`KubernetesTrainingJob` (resources/k8s_training_job.py) runs them in a Kubernetes pod of their own
(dagster-k8s' PipesK8sClient).

A job that outlives its Dagster step would keep training and checkpointing beside the step's
re-execution. `PARENT_PID` (an extra) names the launching process: the job stops when it is gone
(`watch_parent`), so killing the step, even with SIGKILL, stops the training too. A job in a pod of
its own gets no `PARENT_PID` (that process is in another pod); PipesK8sClient deletes its pod instead.
"""

import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources.processes import alive

PARENT_PID = "parent_pid"
# How often a job checks that the process that launched it is still alive.
PARENT_POLL_SECONDS = 1.0


def job_command(python: str, module: str, num_processes: int) -> list[str]:
    """`python -m MODULE`, or torchrun with one process per device on this machine."""
    if num_processes <= 1:
        return [python, "-m", module]
    # --standalone: a rendezvous on this machine alone, on a free port (no master address to set).
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}", "-m", module]


class TrainingJobClient(dg.ConfigurableResource):
    """Launches a training job through Dagster Pipes and waits for it (the interface assets use)."""

    def launch(
        self, context, module: str, num_processes: int, extras: Mapping[str, Any]
    ) -> "dg.PipesClientCompletedInvocation":
        raise NotImplementedError


class LocalTrainingJob(TrainingJobClient):
    """The job as child processes of the Dagster step, on this machine (dagster.PipesSubprocessClient):
    their Pipes log lines reach the run's log as they come; interrupting the step interrupts them."""

    cwd: str = Field(description="Folder the job starts in: the repository root, so `python -m` finds its module.")
    python: str = Field(default="", description="Python interpreter for the job (empty: the one running Dagster).")

    def launch(self, context, module: str, num_processes: int, extras: Mapping[str, Any]):
        command = job_command(self.python or sys.executable, module, num_processes)
        client = dg.PipesSubprocessClient(cwd=self.cwd)
        return client.run(context=context, command=command, extras={**extras, PARENT_PID: os.getpid()})


def watch_parent(extras: Mapping[str, Any], poll: float = PARENT_POLL_SECONDS) -> None:
    """In the job: exit at once when the process that launched it (`PARENT_PID`) is gone."""
    pid = extras.get(PARENT_PID)
    if pid is None or not Path("/proc").is_dir():
        return

    def watch() -> None:
        while alive(pid):
            time.sleep(poll)
        print(f"The process that launched this training job ({pid}) is gone: stopping.", file=sys.stderr)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
