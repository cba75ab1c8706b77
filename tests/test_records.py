"""Record sets: rows written batch by batch to Parquet and read back unchanged; on-disk duplicate keys."""

import json

import pyarrow as pa
import pytest

from assets.domain.values import FileSummary
from assets.raw_records import IngestConfig, stream_drop
from resources.landing import LandingZone
from resources.records import BATCH_ROWS, MESSAGES, FirstSeen, RecordWriter

SCHEMA = pa.schema([("id", pa.int64()), ("split", pa.string()), ("messages", MESSAGES), ("record", pa.string())])


def row(i):
    return {
        "id": i,
        "split": "eval" if i % 3 == 0 else "train",
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
        "record": {"nested": {"list": [i, None]}, "text": "é\n"} if i % 2 else None,
    }


def test_rows_come_back_as_written_in_any_batch_size(tmp_path):
    rows = [row(i) for i in range(25)]
    with RecordWriter(tmp_path / "set.parquet", SCHEMA, ("record",)) as out:
        for start in range(0, 25, 10):
            out.write(rows[start : start + 10])
    records = out.record_set(partition="p", summary={"note": "x"})
    assert len(records) == 25 and records.partition == "p" and records.summary == {"note": "x"}
    batches = list(records.batches(batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4, 1], "at most 4, never across a written batch"
    assert [r for b in batches for r in b] == rows
    evals = records.frame(where=[("split", "=", "eval")])
    assert evals["id"].tolist() == list(range(0, 25, 3))
    assert evals["messages"].iloc[1] == rows[3]["messages"]
    assert records.frame(columns=["id"]).columns.tolist() == ["id"]


def test_tool_calling_messages_come_back_with_exactly_their_own_keys(tmp_path):
    """Plain turns stay {role, content}; tool fields come back only where written (chat templates test
    whether a key is defined, so a None-valued key would change the rendering)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call], "weight": 0},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
        {"role": "assistant", "content": "Rain.", "weight": 1},
    ]
    rows = [{**row(0), "messages": messages}, row(1)]
    with RecordWriter(tmp_path / "set.parquet", SCHEMA, ("record",)) as out:
        out.write(rows)
    assert [r["messages"] for b in out.record_set().batches() for r in b] == [messages, row(1)["messages"]]
    assert out.record_set().frame()["messages"].iloc[1] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    ]


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "set.parquet", SCHEMA) as out:
        out.write([row(0)])
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_first_seen_remembers_keys_across_calls(tmp_path):
    seen = FirstSeen(tmp_path / "seen.sqlite")
    assert seen.check(["a", "b", "a"], ["f:1", "f:2", "f:3"]) == [None, None, "f:1"]
    assert seen.check(["b", "c", "c"], ["g:1", "g:2", "g:3"]) == ["f:2", None, "g:2"]
    seen.close()
    assert FirstSeen(tmp_path / "seen.sqlite").check(["c"], ["h:1"]) == ["g:2"]


def test_a_drop_is_streamed_in_batches_with_continuous_row_ids(tmp_path):
    n = BATCH_ROWS * 2 + 7
    (tmp_path / "d").mkdir()
    with (tmp_path / "d" / "a.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n")
    (tmp_path / "d" / "b.csv").write_text("instruction,input,output\nx,,y\n")
    batches = []
    per_file = stream_drop(LandingZone(path=str(tmp_path)), "d", IngestConfig(), batches.append)
    assert [len(b) for b in batches] == [BATCH_ROWS, BATCH_ROWS, 7, 1]
    ids = [r["row_id"] for b in batches for r in b]
    assert ids == list(range(n + 1))
    assert batches[-1][0]["source_file"] == "d/b.csv" and batches[-1][0]["source_line"] == 2
    assert per_file["d/a.jsonl"] == FileSummary(rows=n, format="prompt_completion", mapping=None)
    assert per_file["d/b.csv"].format == "alpaca"
