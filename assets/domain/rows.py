"""Raw rows as the data stages pass them: where a row came from, and the format of its file.

`raw_records` writes rows with `source_file` and `source_line` and keeps each file's format in its
`RawSummary`; validation and pairing name rows by their place and convert them by their file's format.
"""

from assets.domain.values import FileSummary


def row_location(row: dict) -> str:
    """Where a row came from, as errors, reasons and duplicate notes name it: 'file:line'."""
    return f"{row['source_file']}:{row['source_line']}"


def with_format(rows: list[dict], files: dict[str, FileSummary]) -> list[dict]:
    """Raw rows with their file's `format`, `mapping` and `category_field` (kept per file in the raw summary)."""
    return [{**r, **file_fields(files[r["source_file"]])} for r in rows]


def file_fields(file: FileSummary) -> dict:
    """What a raw row is converted by, from its file's summary."""
    return {"format": file.format, "mapping": file.mapping, "category_field": file.category}
