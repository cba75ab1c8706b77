"""Runs launched through the code location in workspace.yaml, the way the UI launches them.

`make run` loads the workspace (Dagster starts the code location's gRPC server, as `make dev`
does), creates each run from the remote job (so the run carries the code location's origin and
appears under Jobs > <job> > Runs, in the timeline, and re-executes as the same job version), hands
it to the instance's run launcher, and follows the run's event log until the run ends. Following a
run and reading its events (`follow_run`, `run_events`) need only the instance, whoever launched it.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.events import DagsterEvent
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

PARTITION_TAG = "dagster/partition"
# Seconds between two reads of a run's event log while it runs.
POLL_SECONDS = 0.5


class CodeLocationError(RuntimeError):
    """The code location in workspace.yaml failed to load; the message holds its error."""


class CodeLocationRuns:
    """Creates, launches and follows runs of the one code location of a workspace file."""

    def __init__(self, instance: dg.DagsterInstance, context: WorkspaceProcessContext):
        self.instance = instance
        self.context = context

    def _location(self):
        request = self.context.create_request_context()
        (name,) = request.code_location_names
        error = request.get_code_location_error(name)
        if error is not None:
            raise CodeLocationError(f"The code location {name} (workspace.yaml) did not load:\n{error.to_string()}")
        return request, request.get_code_location(name)

    def create(self, job_name: str, partition: str | None = None, tags: dict | None = None) -> dg.DagsterRun:
        """A run of `job_name` (one partition of it when given), created from the remote job as the
        Launchpad creates it: snapshots, execution plan and origin from the code location."""
        _, location = self._location()
        (repository,) = location.get_repositories().values()
        selector = JobSubsetSelector(
            location_name=location.name, repository_name=repository.name, job_name=job_name, op_selection=None
        )
        remote_job = location.get_job(selector)
        plan = location.get_execution_plan(
            remote_job, {}, step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        run_tags = {**remote_job.tags, **(tags or {}), **({PARTITION_TAG: partition} if partition else {})}
        return self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config={},
            resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=run_tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )

    def launch(self, run: dg.DagsterRun) -> None:
        """Start the run now with the instance's run launcher (no queue: `make run` has no daemon)."""
        request, _ = self._location()
        self.instance.launch_run(run.run_id, request)

    def follow(self, run_id: str, show: Callable[[dg.EventLogEntry], None]) -> dg.DagsterRun:
        return follow_run(self.instance, run_id, show)

    def terminate(self, run_id: str) -> None:
        self.instance.run_launcher.terminate(run_id)

    def events(self, run_id: str) -> list[DagsterEvent]:
        return run_events(self.instance, run_id)


def follow_run(instance: dg.DagsterInstance, run_id: str, show: Callable[[dg.EventLogEntry], None]) -> dg.DagsterRun:
    """Hand each entry of the run's event log to `show` as it is written; return the ended run."""
    cursor = None
    while True:
        connection = instance.get_records_for_run(run_id, cursor=cursor)
        for record in connection.records:
            show(record.event_log_entry)
        cursor = connection.cursor
        if connection.has_more:
            continue
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            tail = instance.get_records_for_run(run_id, cursor=cursor)
            for record in tail.records:
                show(record.event_log_entry)
            return run
        time.sleep(POLL_SECONDS)


def run_events(instance: dg.DagsterInstance, run_id: str) -> list[DagsterEvent]:
    """The Dagster events of a run, in the order they were written."""
    return [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event is not None]


@contextmanager
def code_location_runs(instance: dg.DagsterInstance, workspace_file: Path) -> Iterator[CodeLocationRuns]:
    """The workspace of `workspace_file` loaded (its code server started), for launching runs."""
    target = WorkspaceFileTarget(paths=[str(workspace_file)])
    with WorkspaceProcessContext(instance, target) as context:
        yield CodeLocationRuns(instance, context)
