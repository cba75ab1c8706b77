"""`make run`: materialize the whole graph once on the current settings and say where to look."""

import sys

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.settings import Settings


def failed_checks(result) -> list[str]:
    lines = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            data = event.event_specific_data
            severity = data.severity.value.lower()
            lines.append(f"- check {data.asset_check_key.name} ({severity}): {data.description or ''}")
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


def main() -> int:
    settings = Settings.from_env().prepare()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    print(f"Running job 'finetune' with preset '{settings.preset}'; state in {settings.home}")
    result = defs.resolve_job_def("finetune").execute_in_process(instance=instance, raise_on_error=False)
    problems = step_errors(result) + failed_checks(result)
    if not result.success:
        print(f"\nRun {result.run_id} failed. Details: `make dev` and open the run in the Dagster UI.")
        print("\n".join(problems))
        return 1
    reg = result.output_for_node("registered_model")
    print(
        f"\nDone. Dagster run {result.run_id}\n"
        f"  MLflow tracking: {settings.mlflow_tracking_uri} (make mlflow-ui), run {reg['mlflow_run_id']}\n"
        f"  Registered: models:/{reg['model_name']}/{reg['version']}  aliases: {', '.join(reg['aliases'])}\n"
        f"  {reg['primary_metric']}: base {reg['base']:.3f} -> tuned {reg['tuned']:.3f}\n"
        f"  Gate: {'promoted to champion' if reg['promoted'] else 'not promoted'} ({reg['reason']})"
    )
    if problems:
        print("Checks that did not pass (the run went on):\n" + "\n".join(problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
