"""Great Expectations behind one resource: validate a SQLite table against a suite, row by row.

Each validation is kept: its result as JSON and an HTML Data Docs page, both under FT_HOME/gx.
A run's files share one folder, `results/<run name>/`: each suite's result JSON and the features
file the suites read (`FeaturesFile`). The pages (`docs/`, `resources.data_docs`) read offline and
are linked at `docs_url`, where `make dev` serves them.
"""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources.data_docs import write_page
from resources.features_file import FeaturesFile

FEATURES_FILE = "features.sqlite"
DOCS_DIR = "docs"


@dataclass
class ExpectationOutcome:
    """One expectation's result: which rule, whether it held, how many rows broke it and how to find them."""

    expectation: str
    column: str | None
    rule: str
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_query: str | None = None
    """SQL selecting (row id, value) of every row that broke the rule, against the validated table."""
    warn: bool = False
    """A warning (the expectation's severity is not 'critical'): rows breaking it are counted, not rejected."""


@dataclass
class ValidationReport:
    suite: str
    success: bool
    outcomes: list[ExpectationOutcome]
    result_path: str | None = None
    """The Great Expectations validation result, as JSON."""
    docs_url: str | None = None
    """The Data Docs page of this validation (http URL where `make dev` serves it)."""
    page: str | None = None
    """The page's name in the Data Docs folder (without .html)."""

    def failing_rows(self, db) -> Iterator[tuple[int, int, Any]]:
        """(row id, index of the expectation, offending value) for every row failing an expectation
        that rejects (warnings keep their rows), streamed from `db` (a sqlite3 connection to the
        validated file) by each expectation's own query."""
        for index, outcome in enumerate(self.outcomes):
            if outcome.unexpected_count and not outcome.warn:
                if not outcome.unexpected_query:
                    raise RuntimeError(f"Great Expectations gave no query for the rows breaking {outcome.expectation}.")
                for row_id, value in db.execute(outcome.unexpected_query):
                    yield row_id, index, value


class GreatExpectations(dg.ConfigurableResource):
    """Runs Great Expectations 1.x suites on SQLite tables in a file context under FT_HOME/gx."""

    project_dir: str = Field(description="Folder of the GX file context (results and Data Docs).")
    id_column: str = Field(default="row_id", description="Column that identifies rows in results.")
    docs_url: str = Field(
        default="",
        description="http URL where the Data Docs folder (<project_dir>/docs) is served (FT_DOCS_URL; make dev "
        "serves it); pages are linked under it. Empty: linked as file:// paths.",
    )

    @property
    def docs_dir(self) -> Path:
        return Path(self.project_dir) / DOCS_DIR

    def page_url(self, page: str) -> str:
        """The URL of a Data Docs page (`index.html` for the list of every validation)."""
        name = page if page.endswith(".html") else f"{page}.html"
        return f"{self.docs_url.rstrip('/')}/{name}" if self.docs_url else (self.docs_dir / name).resolve().as_uri()

    def publish_verdict(
        self, report: "ValidationReport", title: str, passed: bool, verdict: str, languages: dict | None = None
    ) -> None:
        """Write the page of a validation run with `publish=False`, once, with the verdict that decides
        (the quality gate's: a drop with a few rejected rows within the limit passes) and, when given,
        the rows per detected language."""
        write_page(self.docs_dir, report.page, title, (passed, verdict), report, languages)

    def _context(self):
        import great_expectations as gx

        context = gx.get_context(mode="file", project_root_dir=self.project_dir)
        context.variables.progress_bars = {"globally": False}
        return context

    def results_dir(self, run_name: str) -> Path:
        """The folder of one validation run: its results and its features file."""
        path = Path(self.project_dir) / "results" / run_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def features_file(self, run_name: str, columns: Sequence[tuple[str, str]]) -> FeaturesFile:
        """A fresh features file for one run, with feature `columns` (name, SQLite type); a retried
        step starts afresh rather than appending to what a failed attempt left."""
        path = self.results_dir(run_name) / FEATURES_FILE
        path.unlink(missing_ok=True)
        return FeaturesFile(path, columns, run_name, self.id_column)

    def validate_features(self, features: FeaturesFile, table: str, suite, publish: bool = True) -> ValidationReport:
        """Validate a table of a run's features file, the result kept under the same run."""
        return self.validate_table(features.path, table, suite, features.run_name, publish)

    def validate_table(
        self, database: Path, table: str, suite, run_name: str = "adhoc", publish: bool = True
    ) -> ValidationReport:
        """Validate a table of a SQLite file against `suite`. Great Expectations runs each
        expectation as a query, so the rows never have to fit in memory together; the file stays
        where it is, as the batch the result and its Data Docs page refer to. The page is written
        with the suite's verdict, or, with `publish=False`, left to the caller, who writes it once
        with the verdict that decides (`publish_verdict`); the report links it either way."""
        context = self._context()
        source = context.data_sources.add_or_update_sqlite(
            "records-sqlite", connection_string=f"sqlite:///{Path(database).resolve()}"
        )
        asset = next((a for a in source.assets if a.name == table), None)
        asset = asset or source.add_table_asset(table, table_name=table)
        batch = next((b for b in asset.batch_definitions if b.name == "all rows"), None)
        batch = batch or asset.add_batch_definition_whole_table("all rows")
        return self._run(context, batch, suite, run_name, publish)

    def _checkpoint(self, context, batch, suite):
        import great_expectations as gx

        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
        )
        return context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.name,
                validation_definitions=[definition],
                actions=[],  # Data Docs of our own: GX's pages need the internet for their styles
                # COMPLETE adds, per expectation, the query that selects the failing rows (run by the
                # caller as a stream); the lists of failing values stay capped at 20 examples, so the
                # result is the same size for a thousand rows or a hundred million.
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [self.id_column]},
            )
        )

    def _run(self, context, batch, suite, run_name: str, publish: bool) -> ValidationReport:
        import great_expectations as gx

        suite = context.suites.add_or_update(suite)
        checkpoint = self._checkpoint(context, batch, suite)
        run = checkpoint.run(run_id=gx.RunIdentifier(run_name=run_name))
        result = next(iter(run.run_results.values()))
        result_path = self.results_dir(run_name) / f"{suite.name}.json"
        result_path.write_text(json.dumps(result.to_json_dict(), indent=1, default=str))
        page = f"{run_name}-{suite.name}"
        outcomes = [outcome_of(r) for r in result.results]
        report = ValidationReport(
            suite=suite.name,
            # Great Expectations fails a suite on any broken expectation; a warning's rows pass here.
            success=all(o.success or o.warn for o in outcomes),
            outcomes=outcomes,
            result_path=str(result_path),
            docs_url=self.page_url(page),
            page=page,
        )
        if publish:
            broken = sum(not o.success for o in report.outcomes)
            verdict = "passed: every row met every expectation" if report.success else f"{broken} expectations broken"
            write_page(self.docs_dir, page, f"{run_name}: suite {suite.name}", (report.success, verdict), report)
        return report


def outcome_of(result) -> ExpectationOutcome:
    """One expectation's Great Expectations result as an `ExpectationOutcome`."""
    config = result.expectation_config
    res = result.result or {}
    return ExpectationOutcome(
        expectation=config.type,
        column=config.kwargs.get("column"),
        rule=(config.meta or {}).get("rule", config.type),
        success=bool(result.success),
        # Great Expectations reports None for both on an empty table: no row, none broke the rule.
        element_count=int(res.get("element_count") or 0),
        unexpected_count=int(res.get("unexpected_count") or 0),
        unexpected_query=res.get("unexpected_index_query"),
        warn=severity_of(config) != "critical",
    )


def severity_of(config) -> str:
    """An expectation's severity ('critical', 'warning' or 'info'); 'critical' when it states none."""
    severity = getattr(config, "severity", None) or "critical"
    return str(getattr(severity, "value", severity))
