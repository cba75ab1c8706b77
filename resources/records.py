"""Record sets: how the data assets hand rows downstream without holding a landing in memory.

A data asset writes its rows batch by batch to one Parquet file under FT_HOME/datasets and returns
a `RecordSet`, a small handle the IO manager pickles. The next asset reads it back batch by batch,
so memory stays bounded by the batch size, not by the size of the landing. Columns listed in
`json_columns` hold free-form values (a raw record, PII counts) as JSON text; they are decoded on
reading, so rows come back as they were written. Chat messages (`MESSAGES` columns) come back the
same way: a message holds only the keys it was written with (`role`, `content`, and `tool_calls`,
`tool_call_id`, `weight` where it had them), never a None-valued key, which chat templates would
take for a present one.

`FirstSeen` is the matching piece for duplicate detection: which keys were already seen and
where, kept in an on-disk SQLite table instead of a Python dict.
"""

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 10_000
"""Rows per batch: the unit of reading, processing and writing (and so of peak memory)."""

MESSAGES = pa.list_(
    pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("tool_calls", pa.string()),  # JSON text: an assistant turn's calls, OpenAI shape
            ("tool_call_id", pa.string()),  # a tool turn: the call it answers
            ("weight", pa.int64()),  # an assistant turn: 0 context, 1 trained on
        ]
    )
)


def packed_messages(messages: list[dict] | None) -> list[dict] | None:
    """Messages as a `MESSAGES` column stores them: tool calls as JSON text."""
    if messages is None:
        return None
    return [{**m, "tool_calls": json.dumps(m["tool_calls"])} if m.get("tool_calls") else m for m in messages]


def unpacked_messages(messages: list[dict] | None) -> list[dict] | None:
    """Messages as they were written: tool calls decoded, the struct's empty fields left out."""
    if messages is None:
        return None
    unpacked = []
    for stored in messages:
        m = {k: v for k, v in stored.items() if v is not None}
        if "tool_calls" in m:
            m["tool_calls"] = json.loads(m["tool_calls"])
        unpacked.append(m)
    return unpacked


def row_groups(parquet: pq.ParquetFile, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file one row group at a time. (`ParquetFile.iter_batches` keeps read-ahead buffers
    that grew with the file in our measurements; reading row groups one by one stays flat.)"""
    for index in range(parquet.num_row_groups):
        yield parquet.read_row_group(index, columns=columns)


@dataclass
class RecordSet:
    """Rows stored as one Parquet file; read them with `batches()` (bounded memory) or `frame()`."""

    path: str
    rows: int
    json_columns: tuple[str, ...] = ()
    partition: str | None = None
    """The data drop these rows belong to, for partitioned assets."""
    summary: Any = None
    """The producing asset's typed summary, computed while writing (counts, hashes, files), so
    readers need not re-scan: e.g. `assets.domain.values.PairsSummary` on `instruction_pairs`."""

    def __len__(self) -> int:
        return self.rows

    def _decode(self, table: pa.Table) -> list[dict]:
        rows = table.to_pylist()
        for column in self.json_columns:
            if column in table.column_names:
                for row in rows:
                    if row[column] is not None:
                        row[column] = json.loads(row[column])
        for column in (f.name for f in table.schema if f.type == MESSAGES):
            for row in rows:
                row[column] = unpacked_messages(row[column])
        return rows

    def column_names(self) -> list[str]:
        """The stored columns (a file written before a column was added lacks it)."""
        return pq.read_schema(self.path).names

    def tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The stored row groups as Arrow tables, undecoded (JSON columns as text, messages as
        stored): for passing rows on or filtering them without turning each into a dict."""
        return row_groups(pq.ParquetFile(self.path), columns)

    def batches(self, columns: list[str] | None = None, batch_size: int = BATCH_ROWS) -> Iterator[list[dict]]:
        """The rows in stored order as dicts, at most `batch_size` at a time (a batch never spans two
        of the writer's batches, which are the file's row groups)."""
        for table in row_groups(pq.ParquetFile(self.path), columns):
            for start in range(0, table.num_rows, batch_size):
                yield self._decode(table.slice(start, batch_size))

    def frame(self, columns: list[str] | None = None, where: list[tuple] | None = None) -> pd.DataFrame:
        """The rows (those matching `where`, pyarrow filters such as [("split", "=", "train")]) as
        one data frame. For the slices that fit in memory: a training or eval split, a few columns."""
        table = pq.read_table(self.path, columns=columns, filters=where)
        rows = self._decode(table)
        return pd.DataFrame(rows, columns=table.column_names)


class RecordWriter:
    """Writes batches of row dicts to a Parquet file with a fixed schema. The file appears at
    `path` only when the `with` block ends without error; a failed asset leaves nothing behind.

        with RecordWriter(path, SCHEMA, json_columns=("record",)) as out:
            out.write(rows)
        records = out.record_set(partition="2026-01-05")
    """

    def __init__(self, path: Path, schema: pa.Schema, json_columns: tuple[str, ...] = ()):
        self.path, self.schema, self.json_columns = Path(path), schema, json_columns
        self.message_columns = [f.name for f in schema if f.type == MESSAGES]
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.rows = 0

    def __enter__(self) -> "RecordWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.partial, self.schema)
        return self

    def write(self, rows: list[dict]) -> None:
        """Append row dicts (values as read back: JSON columns and messages decoded). Built column
        by column: no per-row copies of the dicts."""
        if not rows:
            return
        columns = {name: [r.get(name) for r in rows] for name in self.schema.names}
        for name in self.json_columns:
            columns[name] = [None if v is None else json.dumps(v, default=str) for v in columns[name]]
        for name in self.message_columns:
            columns[name] = [packed_messages(v) for v in columns[name]]
        self.write_table(pa.Table.from_pydict(columns, schema=self.schema))

    def write_table(self, table: pa.Table) -> None:
        """Append rows already in stored form (e.g. from `RecordSet.tables()`), columns in schema order."""
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def __exit__(self, kind, error, traceback) -> None:
        self._writer.close()
        if kind is None:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)

    def record_set(self, partition: str | None = None, summary: Any = None) -> RecordSet:
        return RecordSet(str(self.path), self.rows, self.json_columns, partition, summary)


class FirstSeen:
    """Where each text was first seen, for duplicate detection over any number of rows: a 16-byte
    digest of each text lives in a SQLite table on disk, so memory does not grow with the data."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        # A scratch table, rebuilt if a step is retried: each batch's commit need not wait for the disk.
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA journal_mode=MEMORY")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, place TEXT NOT NULL)")

    def check(self, texts: list[str], places: list[str]) -> list[str | None]:
        """For each text, in order: where it was seen before (an earlier call or earlier in this
        list), else None. Every text is then recorded with its first place."""
        keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]
        unique = list(dict.fromkeys(keys))
        known: dict[str, str] = {}
        for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(self.db.execute(f"SELECT key, place FROM seen WHERE key IN ({marks})", chunk))
        found, new = [], {}
        for key, place in zip(keys, places):
            first = known.get(key) or new.get(key)
            found.append(first)
            if first is None:
                new[key] = place
        self.db.executemany("INSERT INTO seen VALUES (?, ?)", new.items())
        self.db.commit()
        return found

    def close(self) -> None:
        self.db.close()
