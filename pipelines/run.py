"""`make run`: bring every drop in the landing location in, then train, evaluate and register.

The same steps the sensor and automation take under `make dev`, taken once by one driver,
`LaunchedPipeline`: release runs left behind by a killed `make run`, prepare the base model,
register new drops as partitions and ingest + validate each, wait for the training pool, then run
the `finetune` job on all validated drops and report. Each run is launched through the code location
in workspace.yaml (the one `make dev` serves), so it is the same job, with the same run history, as
a run launched in the UI. The terminal shows each stage, the training progress and the checks;
Dagster's full log goes to a file under FT_HOME/logs, which the output names. Prints a summary and
where to look. The tests drive the same class (tests/conftest.py `run_all`) with a runs backend
that executes each run in their own process.

In the server profile (FT_PROFILE=server) `make run` first checks that the services of `make server`
answer, and stops at once, saying what to start, when they do not.
"""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

import dagster as dg

from assets.domain.drops import DROPS
from assets.domain.values import Evaluation, RegisteredVersion, TrainedModel
from data_checks.promotion_gate import GATE_CHECK, criterion_text
from pipelines.code_location import CodeLocationError, code_location_runs
from pipelines.definitions import base_model_job, build_definitions, finetune_job, ingest_job, training_data_job
from pipelines.retraining import show_automation_running
from pipelines.server import services_down
from pipelines.settings import REPO_ROOT, Settings
from pipelines.stale_runs import process_tags, release_dead_runs, wait_for_pool

WORKSPACE_FILE = REPO_ROOT / "workspace.yaml"
JOB_TITLES = {finetune_job.name: "Training on every validated drop", training_data_job.name: "Training examples"}
# An asset check that fails blocks its step with this error: an outcome the check explains, not a crash.
BLOCKING_CHECK_ERROR = "DagsterAssetCheckFailedError"


def failed_checks(events: list, drop: str | None = None) -> list[str]:
    """Each check that did not pass in a run's `events`, in one line."""
    lines = []
    for event in events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            data = event.event_specific_data
            where = f" on drop {drop}" if drop else ""
            severity = data.severity.value.lower()
            lines.append(f"- check {data.asset_check_key.name}{where} ({severity}): {data.description or ''}")
    return lines


def innermost(error):
    while error.cause is not None:
        error = error.cause
    return error


def step_errors(events: list) -> list[str]:
    """Each failed step's error in one line; steps stopped by a blocking check are left to
    `failed_checks`, which says which check and why."""
    lines = []
    for event in events:
        if event.is_step_failure and event.step_failure_data.error.cls_name != BLOCKING_CHECK_ERROR:
            lines.append(f"- step {event.step_key}: {innermost(event.step_failure_data.error).message.strip()}")
    return lines


def gate_only_failure(events: list) -> bool:
    """Whether the finetune run of `events` failed only because the promotion gate kept the
    champion: a new version was registered as challenger, which is an outcome, not an error."""
    failed = {e.step_key for e in events if e.is_step_failure}
    checks = [
        e.event_specific_data
        for e in events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    gate = [c for c in checks if c.asset_check_key.name == GATE_CHECK]
    return bool(gate) and failed <= {"registered_model"}


def summary(registered: RegisteredVersion, run_id: str, settings: Settings) -> str:
    """What `make run` prints at the end: where to look, the version, the metric, the verdict."""
    promoted = registered.gate.passed
    return (
        f"\nDone. Dagster run {run_id}\n"
        f"  MLflow tracking: {settings.mlflow_tracking_uri} (make mlflow-ui), run {registered.mlflow_run_id}\n"
        f"  Registered: {registered.model_uri}  aliases: {'challenger, champion' if promoted else 'challenger'}\n"
        f"  {registered.primary_metric}: base {registered.base_value:.3f} -> tuned {registered.tuned_value:.3f}\n"
        f"  Gate: {'promoted to champion' if promoted else 'not promoted, champion unchanged'} "
        f"({registered.gate.confidence:.0%} intervals of the paired differences):\n" + gate_lines(registered.gate)
    )


def gate_lines(gate) -> str:
    """Each criterion of the gate on a line: its difference, interval and items, and whether it passed."""
    lines = []
    for c in gate.criteria:
        outcome = "passed" if c.passed else f"NOT passed, needs {c.threshold}" + (f" ({c.note})" if c.note else "")
        lines.append(f"    - {criterion_text(c)}: {outcome}" + (f" ({c.threshold})" if c.passed else ""))
    return "\n".join(lines)


def training_summary(candidate: TrainedModel, evaluation: Evaluation) -> str:
    """How the candidate was trained (SFT, then DPO when there was one), and its preference scores."""
    line = f"  Trained: {candidate.method}, adapter {candidate.adapter}; SFT {candidate.steps} steps"
    if candidate.best_step is not None:
        stopped = ", stopped early" if candidate.stopped_early else ""
        line += f" (best validation loss {candidate.best_validation_loss:.4f} at step {candidate.best_step}{stopped})"
    if candidate.preference is not None:
        stage = candidate.preference
        line += f", DPO {stage.steps} steps on {stage.pairs} pairs (loss {stage.train_loss:.3f})"
    warm = candidate.warm_start
    if warm is not None and warm.parent is not None:
        line += f"\n  Started from {warm.how}: {warm.new_rows} new rows, {warm.replay_rows} replayed"
    if "preference_accuracy" in evaluation.tuned:
        base, tuned = evaluation.base["preference_accuracy"], evaluation.tuned["preference_accuracy"]
        pairs = evaluation.preference_pairs
        line += f"\n  preference_accuracy on {pairs} held-out pairs: base {base:.3f} -> tuned {tuned:.3f}"
    return line


class Terminal:
    """What `make run` shows: its own lines and the gist of each run's event log on the terminal,
    everything (its lines, and what Dagster and the runs print) in the log file."""

    def __init__(self, out: TextIO, log: TextIO, log_path: Path):
        self.out, self.log, self.log_path = out, log, log_path
        self.started: set[tuple[str, str]] = set()  # (run id, step key) of each step that started

    def say(self, line: str = "") -> None:
        self.out.write(line + "\n")
        self.out.flush()
        self.log.write(line + "\n")
        self.log.flush()

    def show(self, entry: dg.EventLogEntry) -> None:
        """One event log entry, when a reader of the terminal needs it: a step starting or ending,
        the step's own log lines (training progress, what was reused, why a drop was held back),
        each check's verdict in a sentence. Dagster's debug events stay in the log file."""
        event, step = entry.dagster_event, entry.step_key or ""
        if event is None:
            # INFO and above from a running step: what the assets themselves say (Dagster's notes
            # on steps skipped after a failure go to the log only)
            if entry.level >= 20 and (entry.run_id, step) in self.started:
                self.say(f"    {entry.user_message}")
        elif event.event_type_value == "STEP_START":
            self.started.add((entry.run_id, step))
            self.say(f"  {step} ...")
        elif event.event_type_value == "STEP_SUCCESS":
            self.say(f"  {step} done ({event.event_specific_data.duration_ms / 1000:.1f}s)")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            self.say(f"    {check_sentence(event.event_specific_data)}")
        elif event.event_type_value == "ENGINE_EVENT" and entry.level >= 40:  # the run could not start or run
            error = event.engine_event_data.error
            self.say(f"  {event.message}" + (f" {plain_message(innermost(error))}" if error else ""))
        elif event.is_step_failure:
            error = event.step_failure_data.error
            if error.cls_name == BLOCKING_CHECK_ERROR:
                self.say(f"  {step} stopped: a blocking check did not pass (above), so what depends on it did not run")
            else:
                self.say(f"  {step} failed: {plain_message(innermost(error))} (traceback in {self.log_path})")


def plain_message(error) -> str:
    """An error's message without the exception's module and class in front."""
    message = error.message.strip()
    head, _, rest = message.partition(": ")
    return rest if rest and head.endswith(error.cls_name) else message


def check_sentence(evaluation) -> str:
    name, asset = evaluation.asset_check_key.name, evaluation.asset_key.to_user_string()
    detail = f": {evaluation.description}" if evaluation.description else ""
    if evaluation.passed:
        return f"check {name} on {asset} passed{detail}"
    if evaluation.severity == dg.AssetCheckSeverity.WARN:
        return f"check {name} on {asset} warns{detail}"
    return f"check {name} on {asset} did not pass{detail}"


class Runs(Protocol):
    """Where the driver's runs are created and executed. `make run` and `make preview` pass
    `CodeLocationRuns` (runs of the code location in workspace.yaml, launched as the UI launches
    them); the tests pass one that executes each run in their own process (tests/conftest.py)."""

    def create(self, job_name: str, partition: str | None = None, tags: dict | None = None) -> dg.DagsterRun: ...

    def launch(self, run: dg.DagsterRun) -> None: ...

    def follow(self, run_id: str, show: Callable[[dg.EventLogEntry], None]) -> dg.DagsterRun: ...

    def events(self, run_id: str) -> list: ...

    def terminate(self, run_id: str) -> None: ...


class LaunchedPipeline:
    """`make run`'s steps (and `make preview`'s), each a run of `runs` followed on the terminal: the
    one driver, which the tests drive too."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance, runs: Runs, terminal: Terminal):
        self.settings, self.instance, self.runs, self.terminal = settings, instance, runs, terminal
        self.defs = build_definitions(settings)

    def run(self, job_name: str, title: str, partition: str | None = None) -> tuple[dg.DagsterRun, list]:
        """Launch one run of `job_name`, show its progress until it ends: (the run, its events)."""
        run = self.runs.create(job_name, partition, process_tags())
        self.terminal.say(f"\n{title}: run {run.run_id} of job {job_name}")
        self.runs.launch(run)
        try:
            ended = self.runs.follow(run.run_id, self.terminal.show)
        except KeyboardInterrupt:
            self.terminal.say(f"Interrupted: terminating run {run.run_id}.")
            self.runs.terminate(run.run_id)
            raise
        return ended, self.runs.events(run.run_id)

    def ingest_new_drops(self) -> list[str]:
        """Register every drop in the landing location and ingest those never ingested; return problems."""
        drops = sorted({f.drop for f in self.defs.resources["landing"].files()})
        new = [d for d in drops if not self.instance.has_dynamic_partition(DROPS.name, d)]
        self.instance.add_dynamic_partitions(DROPS.name, new)
        done = self.instance.get_materialized_partitions(dg.AssetKey("raw_records"))
        problems = []
        for drop in [d for d in drops if d not in done]:
            _, events = self.run(ingest_job.name, f"Drop {drop}", partition=drop)
            problems += [f"{line} (drop {drop} held back)" for line in step_errors(events)]
            problems += failed_checks(events, drop)
        return problems

    def prepare(self) -> list[str] | None:
        """Base model, then new drops: the problems seen, or None when the base model failed."""
        for line in release_dead_runs(self.instance):
            self.terminal.say(line)
        prepared, events = self.run(base_model_job.name, "Base model")
        if prepared.status != dg.DagsterRunStatus.SUCCESS:
            self.terminal.say("\n".join(["Preparing the base model failed:", *step_errors(events)]))
            return None
        return self.ingest_new_drops()

    def __call__(self, job: str = finetune_job.name) -> tuple[dg.DagsterRun | None, list, list[str]]:
        """Base model, new drops, then the job named `job` (finetune): (its run or None, its events, problems)."""
        problems = self.prepare()
        if problems is None:
            return None, [], ["Preparing the base model failed (above)."]
        if job == finetune_job.name:
            wait_for_pool(self.instance, say=self.terminal.say)
        run, events = self.run(job, JOB_TITLES[job])
        return run, events, problems + step_errors(events) + failed_checks(events)

    def value(self, asset: str):
        return self.defs.load_asset_value(dg.AssetKey(asset), instance=self.instance)


def report(pipeline: LaunchedPipeline, run: dg.DagsterRun | None, events: list, problems: list[str]) -> int:
    """The end of `make run`'s output: the summary, or why the run failed; the exit status."""
    say = pipeline.terminal.say
    registered = any(e.is_step_materialization and e.step_key == "registered_model" for e in events)
    if run is None or not (run.status == dg.DagsterRunStatus.SUCCESS or (registered and gate_only_failure(events))):
        say(f"\nRun {run.run_id if run else ''} failed. Details: `make dev`, then the run in the Dagster UI.")
        say("\n".join(problems))
        say(f"Full log: {pipeline.terminal.log_path}")
        return 1
    say(summary(pipeline.value("registered_model"), run.run_id, pipeline.settings))
    say(training_summary(pipeline.value("preference_tuned_model"), pipeline.value("model_evaluation")))
    others = [p for p in problems if "promotion_gate" not in p and "registered_model" not in p]
    if others:
        say("Problems along the way (the run went on without them):\n" + "\n".join(others))
    say(f"Full log: {pipeline.terminal.log_path}")
    return 0


@contextmanager
def output_to_log(log_path: Path) -> Iterator[Terminal]:
    """Send this process's stdout and stderr, and so those of the code server and the runs it
    starts, to `log_path`; yield a `Terminal` that still writes to the original stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", buffering=1) as log, os.fdopen(os.dup(saved[0]), "w", buffering=1) as out:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield Terminal(out, log, log_path)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def main() -> int:
    settings = Settings.from_env()
    down = services_down(settings)
    if down:
        lines = [f"- {line}" for line in down]
        print(
            "\n".join(["make run (FT_PROFILE=server) needs these services, which do not answer:", *lines]),
            file=sys.stderr,
        )
        return 1
    settings.prepare()
    log_path = settings.home / "logs" / f"make-run-{datetime.now(UTC):%Y%m%d-%H%M%S}.log"
    with output_to_log(log_path) as terminal:
        terminal.say(f"Preset '{settings.preset}'; landing {settings.landing_dir}; state in {settings.home}")
        terminal.say(f"Full log: {log_path}")
        instance = dg.DagsterInstance.get()
        show_automation_running(instance)
        try:
            with code_location_runs(instance, WORKSPACE_FILE) as runs:
                pipeline = LaunchedPipeline(settings, instance, runs, terminal)
                return report(pipeline, *pipeline())
        except CodeLocationError as err:
            terminal.say(str(err))
            return 1
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
