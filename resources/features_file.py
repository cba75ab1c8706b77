"""The features file of one validation run: a SQLite file of per-row feature columns that Great
Expectations validates, kept beside the run's results (`results/<run name>/features.sqlite`).

Handed out by `GreatExpectations.features_file`; the columns come from the caller (the record
suite's feature list), so this module knows the file's layout, not the rules.

    features = gx.features_file("2026-01-05-1a2b3c4d", [("n_tokens", "INTEGER")])
    features.store("records", rows)
    report = gx.validate_features(features, "records", suite)
    rejected = features.record_reasons(report, lambda outcome, value: f"{outcome.rule}: {value}")
"""

import itertools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: expectations.py imports this module
    from resources.expectations import ExpectationOutcome, ValidationReport

# How a broken rule reads in a row's reason, given the expectation's outcome and the row's value.
Describe = Callable[["ExpectationOutcome", Any], str]
REASONS_SEPARATOR = "; "


class FeaturesFile:
    """Feature tables (`row id, column...`) in one SQLite file, the rows each expectation rejected
    (`reasons`), and the validated rows' features copied for the re-validation."""

    def __init__(self, path: Path, columns: Sequence[tuple[str, str]], run_name: str, id_column: str = "row_id"):
        self.path, self.run_name = Path(path), run_name
        self.columns, self.id_column = tuple(columns), id_column
        self.db = sqlite3.connect(self.path)
        # Written once per run (a retried step starts a fresh file): commits, which make the rows
        # visible to Great Expectations' own connection, need not wait for the disk.
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA journal_mode=MEMORY")
        self.rejected: int | None = None
        """How many rows broke a rule, once `record_reasons` has run."""

    def _create(self, table: str) -> None:
        columns = ", ".join(f"{name} {sql_type}" for name, sql_type in self.columns)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({self.id_column} INTEGER PRIMARY KEY, {columns})")

    def store(self, table: str, rows: list[dict]) -> None:
        """Append the rows' feature columns to `table` (created on first use) and commit, so Great
        Expectations, reading the file through a connection of its own, sees them."""
        self._create(table)
        insert = f"INSERT INTO {table} VALUES ({', '.join('?' * (len(self.columns) + 1))})"
        self.db.executemany(insert, [(r[self.id_column], *(r[name] for name, _ in self.columns)) for r in rows])
        self.db.commit()

    def record_reasons(self, report: "ValidationReport", describe: Describe) -> int:
        """Fill the `reasons` table: row id -> every rule the row broke, each described by
        `describe` ('rule: detail; rule: detail'), from the rows each expectation's own query
        selects. Streamed through SQLite, so memory does not grow with the number of rejected rows.
        Returns how many rows were rejected."""
        self.db.execute("CREATE TABLE broken (row_id INTEGER, expectation INTEGER, value)")
        self.db.executemany("INSERT INTO broken VALUES (?, ?, ?)", report.failing_rows(self.db.cursor()))
        self.db.execute("CREATE TABLE reasons (row_id INTEGER PRIMARY KEY, reason TEXT NOT NULL)")
        self.db.executemany("INSERT INTO reasons VALUES (?, ?)", self._grouped(report, describe))
        self.db.commit()
        self.rejected = self.db.execute("SELECT COUNT(*) FROM reasons").fetchone()[0]
        return self.rejected

    def rows_breaking_only(self, expectations: frozenset[int]) -> int:
        """How many rejected rows broke no expectation outside `expectations` (suite indexes)."""
        marks = ",".join("?" * len(expectations)) or "NULL"
        query = (
            "SELECT COUNT(*) FROM (SELECT row_id FROM broken GROUP BY row_id "
            f"HAVING SUM(expectation NOT IN ({marks})) = 0)"
        )
        return self.db.execute(query, tuple(expectations)).fetchone()[0]

    def _grouped(self, report: "ValidationReport", describe: Describe) -> Iterator[tuple[int, str]]:
        rows = self.db.cursor().execute("SELECT row_id, expectation, value FROM broken ORDER BY row_id, expectation")
        for row_id, broken in itertools.groupby(rows, key=lambda r: r[0]):
            yield row_id, REASONS_SEPARATOR.join(describe(report.outcomes[index], value) for _, index, value in broken)

    def reasons_of(self, row_ids: list[int]) -> dict[int, str]:
        """The rejection reasons of a batch's rows (row ids ascend through a drop, so one range query)."""
        if self.rejected is None:
            raise RuntimeError("reasons_of needs record_reasons to have run on this features file first.")
        if not row_ids or not self.rejected:
            return {}
        query = "SELECT row_id, reason FROM reasons WHERE row_id BETWEEN ? AND ?"
        return dict(self.db.execute(query, (min(row_ids), max(row_ids))))

    def keep_passing(self, source: str, target: str) -> None:
        """Copy the features of the rows of `source` that no expectation rejected into `target`."""
        self._create(target)
        self.db.execute(
            f"INSERT INTO {target} SELECT * FROM {source} WHERE {self.id_column} NOT IN (SELECT row_id FROM reasons)"
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
