"""Each supported format, in each file type (plain and gzipped), read and converted to exact messages."""

import gzip
import io
import json

import pandas as pd
import pytest

from assets.domain.formats import detect_format, to_example
from assets.raw_records import IngestConfig, read_drop
from resources.landing import LandingZone

U, A, S = "user", "assistant", "system"


def m(role, content):
    return {"role": role, "content": content}


# format -> (records, the messages of each record, chosen/rejected of each record or None)
CASES = {
    "alpaca": (
        [
            {"instruction": "Add.", "input": "2 + 2", "output": "4"},
            {"instruction": "Greet.", "input": "", "output": "Hello!", "system": "Be kind."},
        ],
        [[m(U, "Add.\n\n2 + 2"), m(A, "4")], [m(S, "Be kind."), m(U, "Greet."), m(A, "Hello!")]],
    ),
    "dolly": (
        [
            {"instruction": "Who?", "context": "Ada wrote it.", "response": "Ada.", "category": "closed_qa"},
            {"instruction": "Name a fish.", "context": "", "response": "Tope.", "category": "open_qa"},
        ],
        [[m(U, "Who?\n\nAda wrote it."), m(A, "Ada.")], [m(U, "Name a fish."), m(A, "Tope.")]],
    ),
    "openai_chat": (
        [
            {
                "messages": [
                    m(S, "Be brief."),
                    m(U, "Hi"),
                    m(A, "Hello."),
                    m(U, "Bye"),
                    m(A, "Goodbye."),
                ]
            },
            {"messages": [m(U, "2+2?"), m(A, "4")], "tools": [{"type": "function", "function": {"name": "calc"}}]},
        ],
        [[m(S, "Be brief."), m(U, "Hi"), m(A, "Hello."), m(U, "Bye"), m(A, "Goodbye.")], [m(U, "2+2?"), m(A, "4")]],
    ),
    "sharegpt": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello."},
                    {"from": "human", "value": "Bye"},
                    {"from": "gpt", "value": "Goodbye."},
                ]
            },
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        ],
        [[m(S, "Be brief."), m(U, "Hi"), m(A, "Hello."), m(U, "Bye"), m(A, "Goodbye.")], [m(U, "2+2?"), m(A, "4")]],
    ),
    "prompt_completion": (
        [{"prompt": "Capital of France?", "completion": "Paris."}, {"prompt": "2+2?", "completion": "4"}],
        [[m(U, "Capital of France?"), m(A, "Paris.")], [m(U, "2+2?"), m(A, "4")]],
    ),
    "preference": (
        [
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        ],
        [[m(U, "Say hi.")], [m(U, "2+2?")]],
        [("Hi!", "No."), ("4", "5")],
    ),
}
MAPPING = {"instruction": "question", "output": "answer"}
MAPPED_CASE = (
    [{"question": "Why?", "answer": "Because."}, {"question": "How?", "answer": "Carefully."}],
    [[m(U, "Why?"), m(A, "Because.")], [m(U, "How?"), m(A, "Carefully.")]],
)


def encode(records: list[dict], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    if suffix == ".json":
        return json.dumps(records, indent=2).encode()
    if suffix == ".csv":
        flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]
        return pd.DataFrame(flat).to_csv(index=False).encode()
    buf = io.BytesIO()
    pd.DataFrame(records).to_parquet(buf, index=False)
    return buf.getvalue()


def ingest(tmp_path, records, suffix, gz, config=None):
    data = encode(records, suffix)
    name = f"data{suffix}" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    rows, _ = read_drop(LandingZone(path=str(tmp_path)), name, config or IngestConfig())
    return rows


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", sorted(CASES))
def test_format_in_file_type_becomes_exact_messages(fmt, suffix, gz, tmp_path):
    records, expected, *answers = CASES[fmt]
    rows = ingest(tmp_path, records, suffix, gz)
    assert [r["format"] for r in rows] == [fmt] * len(records)
    assert [r["source_line"] for r in rows] == ([2, 3] if suffix == ".csv" else [1, 2])
    examples = [to_example(r["record"], r["format"]) for r in rows]
    assert [e.messages for e in examples] == expected
    assert all(not e.problems and not e.missing for e in examples)
    if answers:
        assert [(e.chosen, e.rejected) for e in examples] == answers[0]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_column_mapping_reads_any_columns(suffix, tmp_path):
    records, expected = MAPPED_CASE
    rows = ingest(tmp_path, records, suffix, False, IngestConfig(column_mapping=MAPPING))
    assert [to_example(r["record"], r["format"], r["mapping"]).messages for r in rows] == expected


def test_tools_are_ignored_with_a_warning():
    example = to_example(CASES["openai_chat"][0][1], "openai_chat")
    assert example.warnings == ["tools ignored"]
    calls = {"messages": [m(U, "x"), {"role": "assistant", "content": "y", "tool_calls": []}]}
    assert to_example(calls, "openai_chat").warnings == ["tool calls ignored"]


def test_detection_prefers_the_most_specific_format():
    assert detect_format({"prompt", "chosen", "rejected"}) == "preference"
    assert detect_format({"prompt", "completion"}) == "prompt_completion"
    assert detect_format({"instruction", "context", "response", "category"}) == "dolly"
    assert detect_format({"instruction", "input", "output"}) == "alpaca"
    assert detect_format({"question", "answer"}) is None


@pytest.mark.parametrize(
    ("record", "fmt", "missing", "problem"),
    [
        ({"instruction": "a", "output": " "}, "alpaca", ["output"], None),
        ({"instruction": None, "output": "b"}, "alpaca", ["instruction"], None),
        ({"messages": "hello"}, "openai_chat", [], "messages is not a list of messages"),
        ({"messages": [m("bot", "x")]}, "openai_chat", [], "messages[1] has unknown role 'bot'"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt", [], "conversations[1] has unknown role"),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "openai_chat", [], "messages[1] content is not text"),
        ({"prompt": "p", "chosen": [m(U, "x")], "rejected": "r"}, "preference", [], "chosen does not end with"),
    ],
)
def test_broken_records_report_what_is_wrong(record, fmt, missing, problem):
    example = to_example(record, fmt)
    assert example.missing == missing
    if problem:
        assert example.problems and example.problems[0].startswith(problem)
    else:
        assert not example.problems
