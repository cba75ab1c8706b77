"""`make run`: materialize the whole graph once on the current settings and say where to look."""

import sys

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.settings import Settings


def main() -> int:
    settings = Settings.from_env().prepare()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    print(f"Running job 'finetune' with preset '{settings.preset}'; state in {settings.home}")
    result = defs.resolve_job_def("finetune").execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        failed = [
            e
            for e in result.all_events
            if e.is_step_failure or e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        print(f"\nRun {result.run_id} failed. Details: `make dev` and open the run in the Dagster UI.")
        for event in failed:
            if event.is_step_failure:
                error = event.step_failure_data.error
                while error.cause is not None:
                    error = error.cause
                print(f"- step {event.step_key}: {error.message.strip()}")
            else:
                data = event.event_specific_data
                if not data.passed:
                    print(f"- check {data.asset_check_key.name} failed: {data.description or ''}")
        return 1
    reg = result.output_for_node("registered_model")
    print(
        f"\nDone. Dagster run {result.run_id}\n"
        f"  MLflow tracking: {settings.mlflow_tracking_uri} (make mlflow-ui), run {reg['mlflow_run_id']}\n"
        f"  Registered: models:/{reg['model_name']}/{reg['version']}  aliases: {', '.join(reg['aliases'])}\n"
        f"  {reg['primary_metric']}: base {reg['base']:.3f} -> tuned {reg['tuned']:.3f}\n"
        f"  Gate: {'promoted to champion' if reg['promoted'] else 'not promoted'} ({reg['reason']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
