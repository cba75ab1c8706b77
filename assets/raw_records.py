"""raw_records: every row of every file in the landing location, content unchanged."""

import codecs
import contextlib
import csv
import gzip
import json
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.domain.drops import DROPS
from assets.domain.formats import CATEGORY_FIELD, MAPPED, REQUIRED_FIELDS, detect_format
from assets.domain.values import FileSummary, RawSummary
from resources.landing import DATA_SUFFIXES, LandingFile, LandingZone
from resources.records import BATCH_ROWS, RecordSet, RecordWriter, row_groups
from resources.state import StateStore

WHAT_TO_DO = "The raw file is left as it is: fix it at its source and land it again."


class IngestError(ValueError):
    """A raw file that cannot be read as records. The message names the file, where, and the rule."""


class IngestConfig(dg.ConfigurableResource):
    """How raw files are read as records: the record format (detected per file by default), a column
    mapping for data in no known format, and the field naming a record's category. The `ingest` section
    of the preset."""

    format: str = Field(
        default="auto",
        description="Record format of every file: 'auto' (detected per file from its fields) or one of "
        f"{', '.join(REQUIRED_FIELDS)}. A column_mapping overrides both.",
    )
    column_mapping: dict[str, str] = Field(
        default={},
        description="Our field -> your column, for data in no known format: keys among instruction, "
        "input, output, system; instruction and output are required. Example: "
        '{"instruction": "question", "output": "answer"}.',
    )
    category_field: str = Field(
        default=CATEGORY_FIELD,
        description="The field a record names its category in (Dolly's `category`, a topic, a task name), "
        "whatever the format: kept with each example so evaluation results are also shown per category. "
        "A file without this field has no categories; empty: none are read.",
    )


def _utf8_line(raw: bytes, name: str, number: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IngestError(
            f"{name}, line {number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte offset "
            f"{offset + err.start}). Re-save the file as UTF-8. {WHAT_TO_DO}"
        ) from None


def _utf8_lines(stream, name: str) -> Iterator[str]:
    """The decoded lines of a binary stream, one at a time, line endings kept."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        yield _utf8_line(raw, name, number, offset)
        offset += len(raw)


def _utf8_chunks(stream, name: str, size: int = 1 << 20) -> Iterator[str]:
    """The decoded text of a binary stream, `size` bytes at a time (for files that need not have lines)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0  # bytes read before this chunk, and line breaks among them
    while True:
        data = stream.read(size)
        pending = decoder.getstate()[0]  # an incomplete character carried over (never a line break)
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            at = offset - len(pending) + err.start
            line = newlines + err.object[: err.start].count(b"\n") + 1
            raise IngestError(
                f"{name}, line {line}: not valid UTF-8 (byte 0x{err.object[err.start]:02x} at byte offset "
                f"{at}). Re-save the file as UTF-8. {WHAT_TO_DO}"
            ) from None
        offset, newlines = offset + len(data), newlines + data.count(b"\n")
        if text:
            yield text
        if not data:
            return


def read_jsonl(stream, name: str) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(_utf8_lines(stream, name), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            raise IngestError(
                f"{name}, line {number}: not valid JSON ({err.msg} at column {err.colno}). Each line of "
                f"a .jsonl file must be one JSON object. {WHAT_TO_DO}"
            ) from None
        if not isinstance(record, dict):
            raise IngestError(
                f"{name}, line {number}: expected a JSON object, found {type(record).__name__}. Each "
                f"line of a .jsonl file must be one JSON object with named fields. {WHAT_TO_DO}"
            )
        yield number, record


class _JsonArrayScanner:
    """Reads the elements of a top-level JSON array one at a time from a text stream, so a large
    .json file never has to be in memory whole. Errors carry the line and column in the file."""

    MAX_ELEMENT_CHARS = 64 << 20

    def __init__(self, chunks: Iterator[str], name: str):
        self.chunks, self.name = chunks, name
        self.buf, self.pos = "", 0
        self.line, self.column = 1, 0  # where buf[0] is in the file (column 0-based)
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        """Drop what is consumed, append the next chunk; False at the end of the stream."""
        chunk = None if self.eof else next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        done = self.buf[: self.pos]
        last_break = done.rfind("\n")
        self.line += done.count("\n")
        self.column = len(done) - last_break - 1 if last_break >= 0 else self.column + len(done)
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def _fail(self, message: str, at: int):
        line = self.line + self.buf.count("\n", 0, at)
        last_break = self.buf.rfind("\n", 0, at)
        column = at - last_break if last_break >= 0 else self.column + at + 1
        raise IngestError(
            f"{self.name}, line {line}: not valid JSON ({message} at column {column}). A .json file must hold "
            f"one array of objects. {WHAT_TO_DO}"
        )

    def _peek(self) -> str:
        """The next non-blank character ('' at the end), without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos : self.pos + 1]

    def _value(self):
        self._peek()
        while True:
            try:
                value, self.pos = self.decoder.raw_decode(self.buf, self.pos)
                return value
            except json.JSONDecodeError as err:
                # Either the element goes on in the next chunk, or it is broken: only the end of
                # the file (or an element beyond any sane size) tells which.
                if len(self.buf) - self.pos > self.MAX_ELEMENT_CHARS or not self._more():
                    self._fail(err.msg, err.pos)

    def elements(self) -> Iterator:
        first = self._peek()
        if first != "[":
            kinds = {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "None"}
            found = kinds.get(first, "number" if first and first in "-0123456789" else None)
            if found is None:
                self._fail("Expecting value", self.pos)
            raise IngestError(
                f"{self.name}: expected a JSON array of records, found {found}. Use a .json file holding "
                f"[{{...}}, {{...}}] or one object per line in a .jsonl file. {WHAT_TO_DO}"
            )
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
        else:
            while True:
                yield self._value()
                following = self._peek()
                self.pos += 1
                if following == "]":
                    break
                if following != ",":
                    self._fail("Expecting ',' delimiter", self.pos - 1)
        if self._peek():
            self._fail("Extra data", self.pos)


def read_json(stream, name: str) -> Iterator[tuple[int, dict]]:
    for number, record in enumerate(_JsonArrayScanner(_utf8_chunks(stream, name), name).elements(), start=1):
        if not isinstance(record, dict):
            raise IngestError(
                f"{name}, record {number}: expected a JSON object, found {type(record).__name__}. {WHAT_TO_DO}"
            )
        yield number, record


def read_csv(stream, name: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(_utf8_lines(stream, name))
    header = next(reader, None)
    if not header:
        raise IngestError(f"{name}, line 1: the CSV file is empty; it needs a header row. {WHAT_TO_DO}")
    start = reader.line_num + 1
    for cells in reader:
        if len(cells) != len(header):
            raise IngestError(
                f"{name}, line {start}: {len(cells)} fields where the header has {len(header)} "
                f"({', '.join(header)}). Quote fields that contain commas or line breaks. {WHAT_TO_DO}"
            )
        yield start, dict(zip(header, cells))
        start = reader.line_num + 1


def read_parquet(stream, name: str) -> Iterator[tuple[int, dict]]:
    """Record by record, a row group at a time. Parquet keeps its index at the end of the file, so
    a stream that cannot seek cheaply (a decompressing .gz) is first copied to a temporary file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        source = stream
        if isinstance(stream, gzip.GzipFile) or not stream.seekable():
            source = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(stream, source, 1 << 20)
            source.seek(0)
        try:
            parquet = pq.ParquetFile(source)
        except pa.ArrowException as err:
            raise IngestError(f"{name}: not a readable Parquet file ({err}). {WHAT_TO_DO}") from None
        number = 0
        for table in row_groups(parquet):  # a row group is Parquet's unit of reading
            for start in range(0, table.num_rows, BATCH_ROWS):
                for record in table.slice(start, BATCH_ROWS).to_pylist():
                    number += 1
                    yield number, record


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
# The landing lists files by DATA_SUFFIXES: each needs a reader here, and a reader for any other
# suffix could never be reached. Checked once, on import, so the two lists cannot drift apart.
if set(READERS) != set(DATA_SUFFIXES):
    raise ImportError(f"raw_records has readers for {sorted(READERS)}, the landing lists {sorted(DATA_SUFFIXES)}.")


def file_format(columns: set[str], config: IngestConfig, name: str) -> str:
    """The format of a file's records: the configured one, or detected from its fields."""
    if config.column_mapping:
        missing = sorted({"instruction", "output"} - set(config.column_mapping))
        absent = sorted(set(config.column_mapping.values()) - columns)
        if missing or absent:
            raise IngestError(
                f"{name}: column_mapping needs instruction and output (missing: {', '.join(missing) or '-'}) "
                f"and columns present in the file (absent: {', '.join(absent) or '-'}; the file has "
                f"{', '.join(sorted(columns))})."
            )
        return MAPPED
    if config.format != "auto":
        if config.format not in REQUIRED_FIELDS:
            raise IngestError(f"Unknown format {config.format!r}; use auto or one of {', '.join(REQUIRED_FIELDS)}.")
        return config.format
    detected = detect_format(columns)
    if detected is None:
        known = "; ".join(f"{f}: {', '.join(r)}" for f, r in REQUIRED_FIELDS.items())
        raise IngestError(
            f"{name}: its fields ({', '.join(sorted(columns))}) match no known format ({known}). Rename "
            "the columns, or set a column_mapping in the raw_records config, e.g. "
            '{"instruction": "question", "output": "answer"}.'
        )
    return detected


def records_of(file: LandingFile, stream) -> Iterator[tuple[int, dict]]:
    """(line or record number, record) for each record of one file, as it is read."""
    try:
        yield from READERS[file.suffix](stream, file.name)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise IngestError(
            f"{file.name}: the gzip stream is truncated or corrupt ({err}). Re-copy the file from its "
            f"source. {WHAT_TO_DO}"
        ) from None


def stream_file(
    landing: LandingZone, file: LandingFile, first_row_id: int, write: Callable[[list[dict]], None]
) -> tuple[int, set[str]]:
    """Read one file, handing its rows to `write` in batches of BATCH_ROWS (row ids from
    `first_row_id`). Returns how many rows it held and every field name seen in them."""
    columns: set[str] = set()
    batch: list[dict] = []
    rows = 0
    with landing.open(file) as stream:
        for number, record in records_of(file, stream):
            columns.update(record)
            batch.append(
                {
                    "row_id": first_row_id + rows,
                    "drop": file.drop,
                    "source_file": file.name,
                    "source_line": number,
                    "record": record,
                }
            )
            rows += 1
            if len(batch) == BATCH_ROWS:
                write(batch)
                batch = []
    write(batch)
    return rows, columns


def stream_drop(
    landing: LandingZone, drop: str, ingest: IngestConfig, write: Callable[[list[dict]], None]
) -> dict[str, FileSummary]:
    """Read every file of one drop, handing rows to `write` in batches of BATCH_ROWS: `row_id`,
    `drop`, `source_file`, `source_line` and `record` (the fields, unchanged). Returns each file's
    rows, format, mapping and category field; a file's format is known once all its fields have been seen.

    Any unreadable file fails the whole drop (the caller discards what was written): half a drop
    is never passed on."""
    files = [f for f in landing.files() if f.drop == drop]
    if not files:
        raise IngestError(
            f"Drop {drop!r} has no data files in {landing.path} any more. Its files were moved or "
            "deleted after the drop was registered; land them again under a new drop name."
        )
    per_file, row_id = {}, 0
    for file in files:
        rows, columns = stream_file(landing, file, row_id, write)
        row_id += rows
        if not rows:
            raise IngestError(f"{file.name}: the file holds no records. Remove it or add data.")
        fmt = file_format(columns, ingest, file.name)
        mapping = dict(ingest.column_mapping) if fmt == MAPPED else None
        category = ingest.category_field if ingest.category_field in columns else None
        per_file[file.name] = FileSummary(rows=rows, format=fmt, mapping=mapping, category=category)
    return per_file


RAW_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("drop", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("record", pa.string()),  # JSON text of the record's fields, decoded on reading
    ]
)


@dg.asset(group_name="data", kinds={"parquet"}, partitions_def=DROPS)
def raw_records(
    context: dg.AssetExecutionContext, ingest: IngestConfig, landing: LandingZone, state: StateStore
) -> RecordSet:
    """Every row of one data drop's files (.jsonl, .json, .csv, .parquet, each optionally .gz),
    content unchanged in `record`, with where it came from: `drop` (the partition: dated sub-folder
    or file), `source_file`, `source_line` (1-based line of a text file, record number in a JSON
    array or Parquet file), and a `row_id` later stages use to name rows. Each file's detected
    `format` is in the record set's `RawSummary` (and `with_format` adds it to rows).

    Files are read as streams and rows written in batches to a Parquet file under FT_HOME/datasets,
    so a drop larger than memory goes through. A file that cannot be read fails its drop with an
    error naming the file, the line or byte offset and the problem; nothing is written for that
    drop, and other drops are separate partitions and go on. Raw files are only read.
    """
    drop = context.partition_key
    records = write_drop(landing, drop, ingest, state.dataset_path("raw_records", drop, context.run.run_id))
    per_file = records.summary.files
    formats = Counter()
    for summary in per_file.values():
        formats[summary.format] += summary.rows
    context.add_output_metadata(
        {
            "rows": len(records),
            "files": dg.MetadataValue.json({name: asdict(summary) for name, summary in per_file.items()}),
            "formats": dg.MetadataValue.json(dict(formats)),
            "landing": landing.path,
            "dataset": dg.MetadataValue.path(records.path),
        }
    )
    return records


def write_drop(landing: LandingZone, drop: str, ingest: IngestConfig, path: Path) -> RecordSet:
    """One drop's rows streamed (`stream_drop`) into the Parquet file at `path`, as the record set
    later stages read, with each file's format in its `RawSummary`."""
    with RecordWriter(path, RAW_SCHEMA, ("record",)) as out:
        per_file = stream_drop(landing, drop, ingest, out.write)
    return out.record_set(partition=drop, summary=RawSummary(files=per_file))
