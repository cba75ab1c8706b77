"""The server profile against a real PostgreSQL: a throwaway cluster, the services of `make server`
(MLflow tracking server, Dagster code server, webserver, daemon), the tiny model, the smoke preset.

Two retrains submitted at once through the webserver (as the Launchpad submits them) go through the
daemon's queue and train one after the other on the `training` pool; their run records and the
MLflow registry are read back from PostgreSQL with psycopg2. Then the tracking server is stopped
just before registration: the step fails saying so, and nothing is registered and no alias moves.
"""

import shutil
import time

import dagster as dg
import pytest

from assets.domain.drops import DROPS
from pipelines.definitions import build_definitions
from pipelines.server import LOCATION_NAME, ServiceGroup, server_environment, services, start_services, workspace_file
from pipelines.settings import DAGSTER_POSTGRES_URL_ENV, SAMPLE_LANDING, Settings
from tests.throwaway_postgres import free_port, postgres_cluster

pytestmark = pytest.mark.integration

MODEL = "server-model"
FIRST_DROP = "2026-01-05"
# The tiny model learns nothing: lower the bar so that each retrain is promoted.
LOWER_BAR = {
    "min_improvement": -1.0,
    "min_gain_over_champion": -1.0,
    "max_forgetting_pct": 1000.0,
    "min_preference_gain": -1.0,
}
POOL_STEPS = ("fine_tuned_model", "preference_tuned_model", "model_evaluation")
# Steps run in the run worker's own process: a process per step would cost more than the tiny model.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
RUN_TIMEOUT = 420


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory):
    """The cluster, the environment of the server profile, and the four services started."""
    with postgres_cluster() as cluster, pytest.MonkeyPatch.context() as mp:
        cluster.create_database("dagster")
        home = tmp_path_factory.mktemp("server_home")
        # One drop of tickets: every stage runs, with a quarter of the sample's ingestion.
        one_drop = tmp_path_factory.mktemp("landing")
        shutil.copytree(SAMPLE_LANDING / FIRST_DROP, one_drop / FIRST_DROP)
        env = {
            "FT_PROFILE": "server",
            "FT_POSTGRES_URL": cluster.url("dagster"),
            "FT_HOME": str(home),
            "FT_PRESET": "smoke",
            "FT_LANDING_DIR": str(one_drop),
            "FT_BASE_MODEL": str(tiny_model_dir),
            "FT_MODEL_NAME": MODEL,
            "FT_MLFLOW_PORT": str(free_port()),
            "FT_DAGSTER_PORT": str(free_port()),
            "FT_CODE_SERVER_PORT": str(free_port()),
            "FT_MLFLOW_WORKERS": "1",
            # MLflow's own retries, short: the outage test waits for them to run out.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        }
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Set again by Settings.prepare; named here so that they are restored after the module.
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        mp.setenv(DAGSTER_POSTGRES_URL_ENV, "")
        settings = Settings.from_env().prepare()
        with ServiceGroup(home / "logs", server_environment(settings)) as group:
            start_services(settings, group, say=lambda _: None)
            yield {"settings": settings, "cluster": cluster, "group": group}


def ingest_in_process(settings: Settings) -> None:
    """The base model and every drop, as `make run` prepares them, into the PostgreSQL instance."""
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    assert defs.resolve_job_def("prepare_base_model").execute_in_process(instance=instance).success
    drops = sorted({f.drop for f in defs.resources["landing"].files()})
    instance.add_dynamic_partitions(DROPS.name, drops)
    for drop in drops:
        defs.resolve_job_def("ingest_drop").execute_in_process(instance=instance, partition_key=drop)


def wait_until_finished(instance: dg.DagsterInstance, run_ids: list[str]) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        runs = [instance.get_run_by_id(r) for r in run_ids]
        if all(r.is_finished for r in runs):
            return runs
        time.sleep(2)
    pytest.fail(f"runs {run_ids} not finished within {RUN_TIMEOUT} s: {[r.status for r in runs]}")


def failures(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """What went wrong in a run, for the assertion message: step failures and run-level errors."""
    lines = []
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is not None and event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            lines.append(f"{event.step_key}: {error.to_string()[-2500:]}")
        elif event is not None and event.event_type_value in ("PIPELINE_FAILURE", "ENGINE_EVENT") and entry.level >= 40:
            lines.append(f"{event.event_type_value}: {entry.message} {event.event_specific_data}"[-1500:])
    return lines


def pool_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each training-pool step of the run: (start, end) timestamps."""
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key not in POOL_STEPS:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[event.step_key] = entry.timestamp
    return {step: (starts[step], ends[step]) for step in starts}


@pytest.fixture(scope="module")
def retrains(stack):
    """Two `finetune` runs submitted at once through the webserver's GraphQL API."""
    from dagster_graphql import DagsterGraphQLClient

    settings = stack["settings"]
    ingest_in_process(settings)
    client = DagsterGraphQLClient("127.0.0.1", port_number=settings.server.dagster_port)
    run_config = {"resources": {"gate": {"config": LOWER_BAR}}, **IN_PROCESS}
    run_ids = [
        client.submit_job_execution("finetune", repository_location_name=LOCATION_NAME, run_config=run_config)
        for _ in range(2)
    ]
    instance = dg.DagsterInstance.get()
    runs = wait_until_finished(instance, run_ids)
    return {"instance": instance, "runs": runs}


def test_two_retrains_launched_at_once_train_one_after_the_other(retrains):
    instance, runs = retrains["instance"], retrains["runs"]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2, "\n".join(
        sum((failures(instance, r) for r in runs), [])
    )
    # Both went through the daemon's queue.
    for run in runs:
        types = [e.dagster_event.event_type_value for e in instance.all_logs(run.run_id) if e.dagster_event]
        assert "PIPELINE_ENQUEUED" in types and types.index("PIPELINE_ENQUEUED") < types.index("PIPELINE_STARTING")
    # No two steps of the training pool ever ran at the same time, across the two runs...
    windows = sorted(w for run in runs for w in pool_windows(instance, run.run_id).values())
    assert len(windows) == 2 * len(POOL_STEPS)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:])), windows
    # ...and one of them said it waited for the pool.
    messages = [e.message for run in runs for e in instance.all_logs(run.run_id)]
    assert any("blocked by limit for pool training" in (m or "") for m in messages)


def test_run_records_and_the_registry_are_in_postgresql(stack, retrains):
    cluster, run_ids = stack["cluster"], [r.run_id for r in retrains["runs"]]
    rows = dict(cluster.query("dagster", "SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (run_ids,)))
    assert rows == {r: "SUCCESS" for r in run_ids}
    (events,) = cluster.query("dagster", "SELECT count(*) FROM event_logs WHERE run_id = ANY(%s)", (run_ids,))
    assert events[0] > 50
    versions = cluster.query("mlflow", "SELECT version FROM model_versions WHERE name = %s ORDER BY version", (MODEL,))
    assert [v for (v,) in versions] == [1, 2]
    aliases = dict(
        cluster.query("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))
    )
    assert aliases == {"challenger": 2, "champion": 2}
    (dagster_tags,) = cluster.query(
        "mlflow", "SELECT count(*) FROM model_version_tags WHERE key = 'dagster.run_id' AND value = ANY(%s)", (run_ids,)
    )
    assert dagster_tags[0] == 2


def test_the_password_is_never_shown(stack, retrains):
    cluster, settings = stack["cluster"], stack["settings"]
    secret = cluster.password
    like = f"%{secret}%"
    for table, column in (("event_logs", "event"), ("runs", "run_body")):
        assert cluster.query("dagster", f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", (like,)) == [(0,)]
    for table in ("params", "tags", "model_version_tags", "registered_model_tags", "experiment_tags"):
        assert cluster.query("mlflow", f"SELECT count(*) FROM {table} WHERE value LIKE %s", (like,)) == [(0,)]
    assert secret not in (settings.dagster_home / "dagster.yaml").read_text()
    for log in (settings.home / "logs").glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log.name
    for service in services(settings, workspace_file(settings)):
        assert secret not in " ".join(service.argv)
    assert secret not in repr(settings) and "***" in repr(settings)


def test_registration_fails_clearly_when_the_tracking_server_is_gone(stack, retrains):
    """A run from the evaluation on (training is not repeated: its value is stored) in which the
    tracking server stops right after the evaluation, before `registered_model` starts."""
    settings, group, cluster = stack["settings"], stack["group"], stack["cluster"]
    mlflow = next(s for s in services(settings, workspace_file(settings)) if s.name == "mlflow")

    @dg.success_hook
    def stop_tracking_server(context):
        if context.op.name == "model_evaluation":
            group.stop("mlflow")

    defs = build_definitions(settings, {"gate": LOWER_BAR})
    selection = dg.AssetSelection.assets("model_evaluation", "registered_model", "champion_model")
    outage = dg.define_asset_job("register_outage", selection=selection, hooks={stop_tracking_server})
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[outage])).resolve_job_def("register_outage")
    before = cluster.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases ORDER BY alias")
    try:
        result = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False)
    finally:
        group.start(mlflow)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "registered_model"
    message = failure.step_failure_data.error.message
    assert "could not be reached" in message and "Nothing was registered and no alias moved" in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in message and cluster.password not in message
    assert "champion_model" not in {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    versions = cluster.query("mlflow", "SELECT count(*) FROM model_versions WHERE name = %s", (MODEL,))
    assert versions == [(2,)], "no version was added"
    assert cluster.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases ORDER BY alias") == before
