"""The retraining loop: new drops are registered and ingested by a sensor; retraining follows by
declarative automation (new validated data) and by a schedule (weekly by default), never without
new data.
"""

import hashlib
import json
import sys

import dagster as dg
from dagster._daemon.asset_daemon import get_auto_materialize_paused, set_auto_materialize_paused

from assets.domain.drops import DROPS
from resources.landing import LandingZone

BASE_MODEL = dg.AssetKey("base_model")
VALIDATED = dg.AssetKey("validated_records")
REGISTERED = dg.AssetKey("registered_model")
# Hex characters of a drop's file fingerprints in its ingestion run key (one run per drop content).
RUN_KEY_CHARS = 12


def fingerprints(landing: LandingZone) -> dict[str, dict[str, str]]:
    """Drop -> file -> sha256 of the file's bytes: how a changed file under the same name is caught."""
    drops: dict[str, dict[str, str]] = {}
    for file in landing.files():
        drops.setdefault(file.drop, {})[file.name] = landing.fingerprint(file)
    return drops


def changes(registered: dict[str, str], current: dict[str, str]) -> dict[str, list[str]]:
    """What differs in a drop since it was registered: changed, added and removed files."""
    found = {
        "changed": sorted(f for f in current if f in registered and current[f] != registered[f]),
        "added": sorted(set(current) - set(registered)),
        "removed": sorted(set(registered) - set(current)),
    }
    return {k: v for k, v in found.items() if v}


def plan_tick(cursor: dict, current: dict[str, dict[str, str]], known_drops: set[str]) -> tuple[list, dict, dict]:
    """One sensor tick as a pure function: (drops to ingest, drops changed since registration to
    report, the next cursor). A drop is ingested once; a changed drop is reported once per change."""
    registered: dict = cursor.get("drops", {})
    reported: dict = cursor.get("reported", {})
    new = [d for d in sorted(current) if d not in registered and d not in known_drops]
    # Drops registered outside the sensor (make run, the UI) are adopted without a second ingestion.
    adopted = {d: current[d] for d in current if d not in registered and d in known_drops}
    changed = {
        d: diff
        for d in sorted(registered)
        if (diff := changes(registered[d], current.get(d, {}))) and reported.get(d) != current.get(d, {})
    }
    next_cursor = {
        "drops": {**registered, **adopted, **{d: current[d] for d in new}},
        "reported": {**reported, **{d: current.get(d, {}) for d in changed}},
    }
    return new, changed, next_cursor


def build_landing_sensor(ingest_job, base_model_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        jobs=[ingest_job, base_model_job],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new drop in the landing location as a partition and launches its "
        "ingestion and validation. Reports files changed after their drop was registered.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
        if context.instance.get_latest_materialization_event(BASE_MODEL) is None:
            # Validation needs the base model's tokenizer: prepare it first, take drops next tick.
            return dg.SensorResult(run_requests=[dg.RunRequest(run_key="base_model", job_name=base_model_job.name)])
        cursor = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(DROPS.name))
        new, changed, next_cursor = plan_tick(cursor, fingerprints(landing), known)
        for drop, diff in changed.items():
            context.log.warning(f"Drop {drop} changed after it was registered, not re-ingested: {diff}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=d, job_name=ingest_job.name, run_key=f"{d}:{digest(next_cursor, d)}")
                for d in new
            ],
            dynamic_partitions_requests=[DROPS.build_add_request(new)] if new else [],
            asset_events=[
                dg.AssetObservation(
                    asset_key="raw_records",
                    partition=drop,
                    metadata={
                        "changed_since_registration": dg.MetadataValue.json(diff),
                        "action": "Not re-ingested, so old and new content are never mixed. Land the new "
                        "version as a new drop, or re-materialize this partition to replace it.",
                    },
                )
                for drop, diff in changed.items()
            ],
            cursor=json.dumps(next_cursor, sort_keys=True),
        )

    return landing_sensor


def digest(cursor: dict, drop: str) -> str:
    return hashlib.sha256(json.dumps(cursor["drops"][drop], sort_keys=True).encode()).hexdigest()[:RUN_KEY_CHARS]


def new_data_since_registration(instance: dg.DagsterInstance) -> bool:
    """Whether any drop was validated after the last registered version (or none exists yet)."""
    validated = instance.get_latest_materialization_event(VALIDATED)
    if validated is None:
        return False
    registered = instance.get_latest_materialization_event(REGISTERED)
    return registered is None or validated.timestamp > registered.timestamp


def build_retrain_schedule(finetune_job, cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="retrain_schedule",
        job=finetune_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Retrains on '{cron}' (FT_RETRAIN_CRON) when drops were validated since the last "
        "registered version; skips otherwise.",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext):
        if not new_data_since_registration(context.instance):
            return dg.SkipReason("No drop was validated since the last registered version: nothing to retrain.")
        return dg.RunRequest()

    return retrain_schedule


# Dagster's own automation sensor starts stopped; this one runs from the start.
retrain_automation = dg.AutomationConditionSensorDefinition(
    "retrain_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Retrains (instruction_pairs onwards) as soon as newly validated data exists.",
)


def show_automation_running(instance: dg.DagsterInstance) -> bool:
    """Clear the instance's "auto-materialize paused" flag, which the UI shows on every job and
    asset ("Auto-materialize off") while `retrain_automation` evaluates regardless: an automation
    condition sensor runs by its own status, not by that flag. Returns whether it was set."""
    paused = get_auto_materialize_paused(instance)
    if paused:
        set_auto_materialize_paused(instance, False)
    return paused


if __name__ == "__main__":
    # `make dev`: the instance under FT_HOME shows automation as it runs.
    from pipelines.settings import Settings

    Settings.from_env().prepare()
    with dg.DagsterInstance.get() as dagster_instance:
        show_automation_running(dagster_instance)
    sys.exit(0)
