import json

import pytest

from assets.raw_records import IngestError, build_frame, read_file
from resources.landing import LandingFile, LandingZone


def landing_file(tmp_path, name, content):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    rel = path.relative_to(tmp_path)
    return LandingFile(path=path, name=rel.as_posix(), drop=rel.parts[0] if len(rel.parts) > 1 else rel.name)


def read(file):
    return read_file(file, file.path.read_text(encoding="utf-8"))


def test_jsonl_rows_keep_content_and_their_line_numbers(tmp_path):
    rows = [
        {"instruction": "a", "output": "b", "extra": 3},
        {"instruction": "c", "input": "d", "output": "e"},
    ]
    text = json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
    records = read(landing_file(tmp_path, "2026-01-01/x.jsonl", text))
    assert [r["source_line"] for r in records] == [1, 3]
    assert records[0]["extra"] == 3 and records[1]["input"] == "d"
    assert {r["drop"] for r in records} == {"2026-01-01"}
    assert {r["source_file"] for r in records} == {"2026-01-01/x.jsonl"}


def test_csv_line_numbers_count_multiline_cells(tmp_path):
    text = 'instruction,input,output\n"two\nlines",x,y\nsecond,,z\n'
    records = read(landing_file(tmp_path, "t.csv", text))
    assert [r["source_line"] for r in records] == [2, 4]
    assert records[0]["instruction"] == "two\nlines" and records[1]["input"] == ""


def test_malformed_json_line_is_named_with_file_and_line(tmp_path):
    text = '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n'
    with pytest.raises(IngestError, match=r"bad\.jsonl, line 2: not valid JSON"):
        read(landing_file(tmp_path, "bad.jsonl", text))


def test_non_object_json_line_is_refused(tmp_path):
    with pytest.raises(IngestError, match=r"list\.jsonl, line 1: expected a JSON object, found list"):
        read(landing_file(tmp_path, "list.jsonl", "[1, 2]\n"))


def test_ragged_csv_row_is_named_with_its_line(tmp_path):
    text = "instruction,input,output\na,b,c\nd,e\n"
    with pytest.raises(IngestError, match=r"ragged\.csv, line 3: 2 fields where the header has 3"):
        read(landing_file(tmp_path, "ragged.csv", text))


def test_empty_files_are_refused(tmp_path):
    with pytest.raises(IngestError, match=r"empty\.csv, line 1: the CSV file is empty"):
        read(landing_file(tmp_path, "empty.csv", ""))
    with pytest.raises(IngestError, match=r"empty\.jsonl: the file holds no records"):
        read(landing_file(tmp_path, "empty.jsonl", "\n"))


def test_file_without_the_required_fields_is_refused_with_the_fields_it_has(tmp_path):
    text = json.dumps({"question": "q", "answer": "a"}) + "\n"
    with pytest.raises(IngestError, match=r"no instruction or output field .*answer, question"):
        read(landing_file(tmp_path, "other.jsonl", text))


def test_frame_has_source_and_record_columns_first():
    frame = build_frame(
        [{"instruction": "a", "output": "b", "source_line": 1, "source_file": "f", "drop": "f"}]
    )
    assert list(frame.columns)[:8] == [
        "row_id",
        "drop",
        "source_file",
        "source_line",
        "instruction",
        "input",
        "output",
        "system",
    ]
    assert frame["input"].isna().all()


def test_landing_zone_lists_data_files_with_their_drop(tmp_path):
    for name in ("2026-01-05/a.jsonl", "2026-01-12/b.csv", "loose.jsonl", "notes.txt", ".hidden.jsonl"):
        landing_file(tmp_path, name, "x")
    files = LandingZone(path=str(tmp_path)).files()
    assert [(f.name, f.drop) for f in files] == [
        ("2026-01-05/a.jsonl", "2026-01-05"),
        ("2026-01-12/b.csv", "2026-01-12"),
        ("loose.jsonl", "loose.jsonl"),
    ]


def test_missing_or_empty_landing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="FT_LANDING_DIR"):
        LandingZone(path=str(tmp_path / "nope")).files()
    with pytest.raises(FileNotFoundError, match="holds no data files"):
        LandingZone(path=str(tmp_path)).files()
