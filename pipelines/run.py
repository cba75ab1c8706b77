"""`make run`: bring every drop in the landing location in, then train, evaluate and register.

The same steps the sensor and automation take under `make dev`, run once in this process:
prepare the base model, register new drops as partitions and ingest + validate each, then run the
`finetune` job on all validated drops. Prints where to look.
"""

import sys

import dagster as dg

from assets.domain.drops import DROPS
from assets.domain.values import Evaluation, RegisteredVersion, TrainedModel
from data_checks.promotion_gate import GATE_CHECK
from pipelines.definitions import base_model_job, build_definitions, finetune_job, ingest_job
from pipelines.settings import Settings
from pipelines.stale_runs import process_tags, release_dead_runs, wait_for_pool


def failed_checks(result, drop: str | None = None) -> list[str]:
    lines = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            data = event.event_specific_data
            where = f" on drop {drop}" if drop else ""
            severity = data.severity.value.lower()
            lines.append(f"- check {data.asset_check_key.name}{where} ({severity}): {data.description or ''}")
    return lines


def step_errors(result) -> list[str]:
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            lines.append(f"- step {event.step_key}: {error.message.strip()}")
    return lines


def ingest_new_drops(defs: dg.Definitions, instance: dg.DagsterInstance, landing) -> list[str]:
    """Register every drop in the landing location and ingest those never ingested; return problems."""
    drops = sorted({f.drop for f in landing.files()})
    instance.add_dynamic_partitions(DROPS.name, [d for d in drops if not instance.has_dynamic_partition(DROPS.name, d)])
    done = instance.get_materialized_partitions(dg.AssetKey("raw_records"))
    problems = []
    job = defs.resolve_job_def(ingest_job.name)
    for drop in drops:
        if drop in done:
            continue
        print(f"Ingesting drop {drop}")
        result = job.execute_in_process(
            instance=instance, partition_key=drop, raise_on_error=False, tags=process_tags()
        )
        problems += [f"{line} (drop {drop} held back)" for line in step_errors(result)]
        problems += failed_checks(result, drop)
    return problems


def run_pipeline(defs: dg.Definitions, instance: dg.DagsterInstance):
    """Base model, new drops, then the finetune job: (the finetune run's result or None, problems).
    Runs left behind by a killed `make run` are failed and their pool slots freed first, and the
    finetune job starts only once no live run holds the training pool."""
    for line in release_dead_runs(instance):
        print(line)
    job = defs.resolve_job_def(base_model_job.name)
    prepared = job.execute_in_process(instance=instance, raise_on_error=False, tags=process_tags())
    if not prepared.success:
        return None, ["Preparing the base model failed:", *step_errors(prepared)]
    problems = ingest_new_drops(defs, instance, defs.resources["landing"])
    wait_for_pool(instance)
    job = defs.resolve_job_def(finetune_job.name)
    result = job.execute_in_process(instance=instance, raise_on_error=False, tags=process_tags())
    return result, problems + step_errors(result) + failed_checks(result)


def gate_only_failure(result) -> bool:
    """Whether the finetune run failed only because the promotion gate kept the champion: a new
    version was registered as challenger, which is an outcome, not an error."""
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    checks = [
        e.event_specific_data
        for e in result.all_events
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
        f"({registered.gate.reason})"
    )


def training_summary(candidate: TrainedModel, evaluation: Evaluation) -> str:
    """How the candidate was trained (SFT, then DPO when there was one), and its preference scores."""
    line = f"  Trained: {candidate.method}, adapter {candidate.adapter}; SFT {candidate.steps} steps"
    if candidate.preference is not None:
        stage = candidate.preference
        line += f", DPO {stage.steps} steps on {stage.pairs} pairs (loss {stage.train_loss:.3f})"
    if "preference_accuracy" in evaluation.tuned:
        base, tuned = evaluation.base["preference_accuracy"], evaluation.tuned["preference_accuracy"]
        pairs = evaluation.preference_pairs
        line += f"\n  preference_accuracy on {pairs} held-out pairs: base {base:.3f} -> tuned {tuned:.3f}"
    return line


def main() -> int:
    settings = Settings.from_env().prepare()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    print(f"Preset '{settings.preset}'; landing {settings.landing_dir}; state in {settings.home}")
    result, problems = run_pipeline(defs, instance)
    if result is None or not (result.success or gate_only_failure(result)):
        print(f"\nRun {result.run_id if result else ''} failed. Details: `make dev`, then the run in the Dagster UI.")
        print("\n".join(problems))
        return 1
    print(summary(result.output_for_node("registered_model"), result.run_id, settings))
    print(
        training_summary(result.output_for_node("preference_tuned_model"), result.output_for_node("model_evaluation"))
    )
    others = [p for p in problems if "promotion_gate" not in p and "registered_model" not in p]
    if others:
        print("Problems along the way (the run went on without them):\n" + "\n".join(others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
