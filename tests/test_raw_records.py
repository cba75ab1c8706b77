"""Reading raw files: every supported type, precise errors for the bad-file corpus, drop isolation."""

import hashlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from assets.domain.rows import row_location, with_format
from assets.domain.values import FileSummary
from assets.raw_records import READERS, IngestConfig, IngestError, write_drop
from data_checks.record_rules import RuleValues, conversation_row
from resources.landing import DATA_SUFFIXES, LandingZone

BAD_FILES = Path(__file__).parent / "bad_files"


def rows_of_drop(landing: LandingZone, drop: str, config: IngestConfig) -> tuple[list[dict], dict[str, FileSummary]]:
    """One drop's rows as `raw_records` writes them (`write_drop`, into Parquet) and later stages read
    them (each with its file's format), and the per-file summary."""
    with tempfile.TemporaryDirectory() as folder:
        records = write_drop(landing, drop, config, Path(folder) / "raw.parquet")
        files = records.summary.files
        return [row for batch in records.batches() for row in with_format(batch, files)], files


# bad file -> the message it must produce (a regular expression); each names file, place and problem
EXPECTED_ERRORS = {
    "malformed_line.jsonl": r"malformed_line\.jsonl, line 3: not valid JSON \(Expecting value at column 38\)",
    "latin1.jsonl": r"latin1\.jsonl, line 2: not valid UTF-8 \(byte 0xe9 at byte offset 64\)\. Re-save .* as UTF-8",
    "truncated.jsonl.gz": r"truncated\.jsonl\.gz: the gzip stream is truncated or corrupt .*Re-copy the file",
    "empty.jsonl": r"empty\.jsonl: the file holds no records",
    "empty.csv": r"empty\.csv, line 1: the CSV file is empty; it needs a header row",
    "unknown_columns.jsonl": (
        r"unknown_columns\.jsonl: its fields \(answer, question\) match no known format .*column_mapping"
    ),
    "ragged.csv": r"ragged\.csv, line 3: 2 fields where the header has 3 \(instruction, input, output\)",
    "latin1.csv": r"latin1\.csv, line 3: not valid UTF-8 \(byte 0xe9 at byte offset 34\)",
    "not_an_array.json": r"not_an_array\.json: expected a JSON array of records, found dict",
    "broken_array.json": r"broken_array\.json, line 4: not valid JSON \(Expecting ':' delimiter",
    "not_parquet.parquet": r"not_parquet\.parquet: not a readable Parquet file",
    "scalar_line.jsonl": r"scalar_line\.jsonl, line 2: expected a JSON object, found list",
}


# bad file -> (source line -> the feature and reason its row is rejected with): files that read fine
# but hold rows the record rules reject; every other row of the file passes.
EXPECTED_REJECTIONS = {
    "tool_call_bad_arguments.jsonl": {
        2: (
            "tool_call_error",
            "turn 2 calls 'get_weather' with arguments that are not valid JSON (Expecting property name "
            "enclosed in double quotes at column 2): \"{'city': 'Paris'}\"",
        )
    },
    "preference_same_answers.jsonl": {
        2: (
            "structure_error",
            "chosen and rejected answers are the same (up to case and whitespace): nothing to prefer",
        )
    },
}


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_bad_file_in_the_corpus_has_a_test():
    corpus = {p.name for p in BAD_FILES.iterdir() if p.suffix != ".py"}
    assert corpus == set(EXPECTED_ERRORS) | set(EXPECTED_REJECTIONS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_file_stops_its_drop_with_a_precise_message(name, tmp_path):
    shutil.copy(BAD_FILES / name, tmp_path / name)
    before = digest(tmp_path)
    with pytest.raises(IngestError) as failure:
        rows_of_drop(LandingZone(path=str(tmp_path)), name, IngestConfig())
    message = str(failure.value)
    assert re.search(EXPECTED_ERRORS[name], message), message
    assert "fix it at its source" in message or "column_mapping" in message or "Remove it" in message
    assert digest(tmp_path) == before, "raw files are never modified"


@pytest.mark.parametrize("name", sorted(EXPECTED_REJECTIONS))
def test_bad_rows_in_a_readable_file_are_rejected_by_name(name, tmp_path):
    shutil.copy(BAD_FILES / name, tmp_path / name)
    rows, _ = rows_of_drop(LandingZone(path=str(tmp_path)), name, IngestConfig())
    rules = RuleValues(max_tokens=512, truncate_over_long=False, system_prompt="Be precise.", pii="warn")
    features = ("missing_fields", "structure_error", "tool_call_error", "hygiene_error")
    converted = [conversation_row(r, rules) for r in rows]
    broken = {r["source_line"]: (f, r[f]) for r in converted for f in features if r[f] is not None}
    assert broken == EXPECTED_REJECTIONS[name]


def test_a_bad_file_fails_its_whole_drop_and_no_other(tmp_path):
    write(tmp_path, "2026-01-01/good.jsonl", '{"instruction": "a", "output": "b"}\n')
    write(tmp_path, "2026-01-02/fine.jsonl", '{"instruction": "c", "output": "d"}\n')
    shutil.copy(BAD_FILES / "ragged.csv", tmp_path / "2026-01-02" / "bad.csv")
    write(tmp_path, "2026-01-03/good.csv", "instruction,output\ne,f\n")
    before = digest(tmp_path)
    landing = LandingZone(path=str(tmp_path))
    with pytest.raises(IngestError, match=r"2026-01-02/bad\.csv, line 3"):
        rows_of_drop(landing, "2026-01-02", IngestConfig())
    for drop in ("2026-01-01", "2026-01-03"):
        rows, per_file = rows_of_drop(landing, drop, IngestConfig())
        assert {r["drop"] for r in rows} == {drop} and len(per_file) == 1
    assert digest(tmp_path) == before


def test_a_drop_whose_files_vanished_says_so(tmp_path):
    write(tmp_path, "2026-01-01/good.jsonl", '{"instruction": "a", "output": "b"}\n')
    with pytest.raises(IngestError, match="Drop '2026-01-09' has no data files"):
        rows_of_drop(LandingZone(path=str(tmp_path)), "2026-01-09", IngestConfig())


def test_line_numbers_follow_the_raw_file(tmp_path):
    write(tmp_path, "a.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n')
    write(tmp_path, "b.csv", 'instruction,input,output\n"two\nlines",x,y\nsecond,,z\n')
    rows, _ = rows_of_drop(LandingZone(path=str(tmp_path)), "a.jsonl", IngestConfig())
    rows += rows_of_drop(LandingZone(path=str(tmp_path)), "b.csv", IngestConfig())[0]
    assert [(r["source_file"], r["source_line"]) for r in rows] == [
        ("a.jsonl", 1),
        ("a.jsonl", 3),
        ("b.csv", 2),
        ("b.csv", 4),
    ]
    assert rows[2]["record"] == {"instruction": "two\nlines", "input": "x", "output": "y"}


def test_every_suffix_the_landing_lists_has_a_reader():
    assert sorted(READERS) == sorted(DATA_SUFFIXES)


def test_rows_are_named_by_file_and_line_and_get_their_files_format():
    files = {"d/a.jsonl": FileSummary(rows=1, format="alpaca"), "d/b.csv": FileSummary(2, "mapped", {"output": "y"})}
    rows = [{"source_file": "d/b.csv", "source_line": 3, "record": {}}, {"source_file": "d/a.jsonl", "source_line": 1}]
    assert [row_location(r) for r in rows] == ["d/b.csv:3", "d/a.jsonl:1"]
    assert [(r["format"], r["mapping"]) for r in with_format(rows, files)] == [
        ("mapped", {"output": "y"}),
        ("alpaca", None),
    ]
    assert "format" not in rows[0], "the raw rows are left as they were"


def test_landing_zone_lists_data_files_with_their_drop(tmp_path):
    for name in ("2026-01-05/a.jsonl", "2026-01-12/b.csv.gz", "loose.parquet", "notes.txt", ".hidden.jsonl"):
        write(tmp_path, name, "x")
    files = LandingZone(path=str(tmp_path)).files()
    assert [(f.name, f.drop, f.suffix, f.compressed) for f in files] == [
        ("2026-01-05/a.jsonl", "2026-01-05", ".jsonl", False),
        ("2026-01-12/b.csv.gz", "2026-01-12", ".csv", True),
        ("loose.parquet", "loose.parquet", ".parquet", False),
    ]


def test_fsspec_urls_work_like_folders(tmp_path):
    write(tmp_path, "d/a.jsonl", '{"instruction": "a", "output": "b"}\n')
    rows, _ = rows_of_drop(LandingZone(path=tmp_path.as_uri()), "d", IngestConfig())
    assert rows[0]["source_file"] == "d/a.jsonl" and rows[0]["drop"] == "d"


def test_missing_or_empty_landing_location_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="FT_LANDING_DIR"):
        LandingZone(path=str(tmp_path / "nope")).files()
    with pytest.raises(FileNotFoundError, match="holds no data files"):
        LandingZone(path=str(tmp_path)).files()


def test_configured_format_and_mapping_are_checked_against_the_file(tmp_path):
    write(tmp_path, "a.jsonl", '{"question": "q", "answer": "a"}\n')
    landing = LandingZone(path=str(tmp_path))
    rows, _ = rows_of_drop(
        landing, "a.jsonl", IngestConfig(column_mapping={"instruction": "question", "output": "answer"})
    )
    assert rows[0]["format"] == "mapped" and rows[0]["mapping"]["output"] == "answer"
    with pytest.raises(IngestError, match="absent: reply"):
        rows_of_drop(landing, "a.jsonl", IngestConfig(column_mapping={"instruction": "question", "output": "reply"}))
    with pytest.raises(IngestError, match="Unknown format 'alpacca'"):
        from assets.raw_records import file_format

        file_format({"x"}, IngestConfig(format="alpacca"), "a.jsonl")


@pytest.mark.parametrize("chunk", [1, 5, 64, 4096])
def test_json_arrays_are_read_in_chunks_exactly_as_json_loads_reads_them(chunk):
    """The .json reader never holds the file whole: elements, and the line and column of errors,
    must match the standard library's whole-file parse at any chunk size."""
    from assets import raw_records

    def scan(data: bytes):
        chunks = raw_records._utf8_chunks(io.BytesIO(data), "f.json", chunk)
        return list(raw_records._JsonArrayScanner(chunks, "f.json").elements())

    records = [{"instruction": "é" * (i % 7) + '"\n', "n": i, "tags": [i, None, {"x": 1.5}]} for i in range(200)]
    for indent in (None, 2):
        assert scan(json.dumps(records, indent=indent, ensure_ascii=False).encode()) == records
    for broken in [
        '[{"a":1},]',
        '[{"a":1} {"b":2}]',
        '[\n {"a": 1},\n {"b" 2}\n]',
        '[{"a":1}] x',
        "[",
        "",
        '[{"a": tru}]',
    ]:
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(broken)
        with pytest.raises(IngestError) as failure:
            scan(broken.encode())
        e = expected.value
        assert f"line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})" in str(failure.value)
