"""champion_model: the registered version that deployments load, alias `champion`."""

import dagster as dg

from assets.domain.values import ChampionVersion, RegisteredVersion
from resources.mlflow_registry import MlflowRegistry

# Promote right after a registration whose gate passed; a failed gate blocks it.
PROMOTE_AFTER_GATE = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


@dg.asset(group_name="model", kinds={"mlflow"}, automation_condition=PROMOTE_AFTER_GATE)
def champion_model(
    context: dg.AssetExecutionContext, registered_model: RegisteredVersion, mlflow_registry: MlflowRegistry
) -> ChampionVersion:
    """The version of the registered model holding alias `champion`, the one deployments serve
    (`models:/<name>@champion`). Moved here only when the new version passed the promotion gate;
    the version records who moved the alias, when and why (`promoted_by`, `promoted_at`,
    `promotion_reason`). `make promote VERSION=n` moves it back by hand.
    """
    version, gate = registered_model.version, registered_model.gate
    if not gate.passed:
        raise dg.Failure(
            description=f"Version {version} did not pass the promotion gate ({gate.reason}); "
            "the champion stays where it is. Use `make promote VERSION=n` to move it by hand."
        )
    previous = mlflow_registry.promote(version, by=f"pipeline (dagster run {context.run.run_id})", reason=gate.reason)
    context.add_output_metadata(
        {"version": int(version), "previous_champion": previous or "none", "reason": gate.reason}
    )
    return ChampionVersion(model_name=registered_model.model_name, version=version, previous=previous)
