"""Great Expectations behind one resource: validate a data frame against a suite, row by row."""

from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import Field


@dataclass
class ExpectationOutcome:
    """One expectation's result: which rule, whether it held, and the ids of the rows that broke it."""

    expectation: str
    column: str | None
    rule: str
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_ids: list[Any] = field(default_factory=list)


@dataclass
class ValidationReport:
    suite: str
    success: bool
    outcomes: list[ExpectationOutcome]

    def failing_reasons(self) -> dict[Any, list[str]]:
        """Row id -> the rules that row broke, in suite order."""
        reasons: dict[Any, list[str]] = {}
        for outcome in self.outcomes:
            for row_id in outcome.unexpected_ids:
                reasons.setdefault(row_id, []).append(outcome.rule)
        return reasons


class GreatExpectations(dg.ConfigurableResource):
    """Runs Great Expectations 1.x suites on pandas frames in an ephemeral context."""

    id_column: str = Field(default="row_id", description="Column that identifies rows in results.")

    def validate(self, frame, suite) -> ValidationReport:
        """Validate `frame` against `suite` (a gx.ExpectationSuite); every failing row id is reported.

        Each expectation's `meta["rule"]` is the human wording of the rule used in rejection reasons.
        """
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        batch = (
            context.data_sources.add_or_update_pandas("records")
            .add_dataframe_asset(suite.name)
            .add_batch_definition_whole_dataframe("all rows")
        )
        suite = context.suites.add_or_update(suite)
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [self.id_column]},
        )
        outcomes = []
        for r in result.results:
            config = r.expectation_config
            res = r.result or {}
            ids = [item[self.id_column] for item in res.get("unexpected_index_list") or []]
            outcomes.append(
                ExpectationOutcome(
                    expectation=config.type,
                    column=config.kwargs.get("column"),
                    rule=(config.meta or {}).get("rule", config.type),
                    success=bool(r.success),
                    element_count=int(res.get("element_count", len(frame))),
                    unexpected_count=int(res.get("unexpected_count", len(ids))),
                    unexpected_ids=[int(i) if hasattr(i, "__int__") else i for i in ids],
                )
            )
        return ValidationReport(suite=suite.name, success=bool(result.success), outcomes=outcomes)
