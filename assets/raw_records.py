"""raw_records: every row of every file in the landing folder, content unchanged."""

import csv
import io
import json

import dagster as dg
import pandas as pd

from assets._chat_format import INSTRUCTION, OUTPUT, RECORD_COLUMNS
from resources.landing import LandingFile, LandingZone

# Where each row came from; together they point at the exact line of the raw file.
SOURCE_COLUMNS = ("row_id", "drop", "source_file", "source_line")


class IngestError(ValueError):
    """A raw file that cannot be read as records. The message names the file, the line and the rule."""


def parse_jsonl(file: LandingFile, content: str) -> list[dict]:
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise IngestError(
                f"{file.name}, line {number}: not valid JSON ({err.msg} at column {err.colno}). "
                "Each line of a .jsonl file must be one JSON object; fix or remove that line."
            ) from None
        if not isinstance(record, dict):
            raise IngestError(
                f"{file.name}, line {number}: expected a JSON object, found {type(record).__name__}. "
                "Each line of a .jsonl file must be one JSON object with named fields."
            )
        rows.append({**record, "source_line": number})
    return rows


def parse_csv(file: LandingFile, content: str) -> list[dict]:
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if not header:
        raise IngestError(f"{file.name}, line 1: the CSV file is empty; it needs a header row.")
    rows = []
    start = reader.line_num + 1
    for cells in reader:
        if len(cells) != len(header):
            raise IngestError(
                f"{file.name}, line {start}: {len(cells)} fields where the header has {len(header)} "
                f"({', '.join(header)}). Quote fields that contain commas or line breaks."
            )
        rows.append({**dict(zip(header, cells)), "source_line": start})
        start = reader.line_num + 1
    return rows


PARSERS = {".jsonl": parse_jsonl, ".csv": parse_csv}


def read_file(file: LandingFile, content: str) -> list[dict]:
    """Records of one file, each tagged with its file, drop and line; refuses files without the schema."""
    rows = PARSERS[file.path.suffix](file, content)
    if not rows:
        raise IngestError(f"{file.name}: the file holds no records. Remove it or add data.")
    columns = set().union(*(r.keys() for r in rows))
    missing = [c for c in (INSTRUCTION, OUTPUT) if c not in columns]
    if missing:
        raise IngestError(
            f"{file.name}: no {' or '.join(missing)} field in any record (fields found: "
            f"{', '.join(sorted(columns - {'source_line'}))}). Records need instruction, output and "
            "optionally input and system fields."
        )
    for row in rows:
        row["source_file"] = file.name
        row["drop"] = file.drop
    return rows


def build_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "row_id", range(len(frame)))
    for column in RECORD_COLUMNS:
        if column not in frame:
            frame[column] = None
    leading = list(SOURCE_COLUMNS) + list(RECORD_COLUMNS)
    return frame[leading + [c for c in frame.columns if c not in leading]]


@dg.asset(group_name="data", kinds={"pandas"})
def raw_records(context: dg.AssetExecutionContext, landing: LandingZone) -> pd.DataFrame:
    """Every row of every data file in the landing folder (JSONL or CSV), content unchanged, with
    where it came from: `drop` (dated sub-folder), `source_file` and `source_line` (1-based line of
    the raw file), and a `row_id` that later stages use to name rows.

    A file that cannot be read stops ingestion with an error naming the file and line. Raw files
    are only read, never modified.
    """
    rows = []
    per_file = {}
    for file in landing.files():
        records = read_file(file, landing.read_text(file))
        per_file[file.name] = len(records)
        rows.extend(records)
    frame = build_frame(rows)
    context.add_output_metadata(
        {
            "rows": len(frame),
            "files": dg.MetadataValue.json(per_file),
            "drops": dg.MetadataValue.json(sorted(frame["drop"].unique().tolist())),
            "landing_dir": dg.MetadataValue.path(landing.path),
            "preview": dg.MetadataValue.md(frame.head(5).to_markdown(index=False)),
        }
    )
    return frame
