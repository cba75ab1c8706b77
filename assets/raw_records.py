"""raw_records: every row of every file in the landing location, content unchanged."""

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from assets._drops import DROPS
from assets._formats import MAPPED, REQUIRED_FIELDS, detect_format
from resources.landing import LandingFile, LandingZone

WHAT_TO_DO = "The raw file is left as it is: fix it at its source and land it again."


class IngestError(ValueError):
    """A raw file that cannot be read as records. The message names the file, where, and the rule."""


class IngestConfig(dg.ConfigurableResource):
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


def _utf8_line(raw: bytes, name: str, number: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IngestError(
            f"{name}, line {number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte offset "
            f"{offset + err.start}). Re-save the file as UTF-8. {WHAT_TO_DO}"
        ) from None


def _utf8_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise IngestError(
            f"{name}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at byte offset "
            f"{err.start}). Re-save the file as UTF-8. {WHAT_TO_DO}"
        ) from None


def read_jsonl(stream, name: str) -> Iterator[tuple[int, dict]]:
    offset = 0
    for number, raw in enumerate(stream, start=1):
        line = _utf8_line(raw, name, number, offset)
        offset += len(raw)
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


def read_json(stream, name: str) -> Iterator[tuple[int, dict]]:
    text = _utf8_text(stream.read(), name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(
            f"{name}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}). A .json "
            f"file must hold one array of objects. {WHAT_TO_DO}"
        ) from None
    if not isinstance(data, list):
        raise IngestError(
            f"{name}: expected a JSON array of records, found {type(data).__name__}. Use a .json file "
            f"holding [{{...}}, {{...}}] or one object per line in a .jsonl file. {WHAT_TO_DO}"
        )
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise IngestError(
                f"{name}, record {number}: expected a JSON object, found {type(record).__name__}. {WHAT_TO_DO}"
            )
        yield number, record


def read_csv(stream, name: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(_utf8_text(stream.read(), name), newline=""))
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(stream.read()))
    except pa.ArrowException as err:
        raise IngestError(f"{name}: not a readable Parquet file ({err}). {WHAT_TO_DO}") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=10_000):
        for record in batch.to_pylist():
            number += 1
            yield number, record


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}


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


def read_file(file: LandingFile, stream, config: IngestConfig) -> list[dict]:
    """One file's rows: source columns, detected `format`, and `record` (the fields, unchanged)."""
    try:
        rows = list(READERS[file.suffix](stream, file.name))
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise IngestError(
            f"{file.name}: the gzip stream is truncated or corrupt ({err}). Re-copy the file from its "
            f"source. {WHAT_TO_DO}"
        ) from None
    if not rows:
        raise IngestError(f"{file.name}: the file holds no records. Remove it or add data.")
    columns = set().union(*(r.keys() for _, r in rows))
    fmt = file_format(columns, config, file.name)
    mapping = dict(config.column_mapping) if fmt == MAPPED else None
    return [
        {"drop": file.drop, "source_file": file.name, "source_line": n, "format": fmt, "mapping": mapping, "record": r}
        for n, r in rows
    ]


def build_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["drop", "source_file", "source_line", "format", "mapping", "record"])
    frame.insert(0, "row_id", range(len(frame)))
    return frame


def read_drop(landing: LandingZone, drop: str, ingest: IngestConfig) -> tuple[list[dict], dict]:
    """Rows of every file of one drop, and rows per file. Any unreadable file fails the whole drop:
    half a drop is never passed on."""
    files = [f for f in landing.files() if f.drop == drop]
    if not files:
        raise IngestError(
            f"Drop {drop!r} has no data files in {landing.path} any more. Its files were moved or "
            "deleted after the drop was registered; land them again under a new drop name."
        )
    rows, per_file = [], {}
    for file in files:
        with landing.open(file) as stream:
            records = read_file(file, stream, ingest)
        per_file[file.name] = {"rows": len(records), "format": records[0]["format"]}
        rows.extend(records)
    return rows, per_file


@dg.asset(group_name="data", kinds={"pandas"}, partitions_def=DROPS)
def raw_records(context: dg.AssetExecutionContext, ingest: IngestConfig, landing: LandingZone) -> pd.DataFrame:
    """Every row of one data drop's files (.jsonl, .json, .csv, .parquet, each optionally .gz),
    content unchanged in `record`, with where it came from: `drop` (the partition: dated sub-folder
    or file), `source_file`, `source_line` (1-based line of a text file, record number in a JSON
    array or Parquet file), the detected `format`, and a `row_id` later stages use to name rows.

    A file that cannot be read fails its drop with an error naming the file, the line or byte
    offset and the problem; other drops are separate partitions and go on. Raw files are only read.
    """
    rows, per_file = read_drop(landing, context.partition_key, ingest)
    frame = build_frame(rows)
    context.add_output_metadata(
        {
            "rows": len(frame),
            "files": dg.MetadataValue.json(per_file),
            "formats": dg.MetadataValue.json(frame["format"].value_counts().to_dict()),
            "landing": landing.path,
        }
    )
    return frame
