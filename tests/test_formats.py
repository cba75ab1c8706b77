"""Each supported format, in each file type (plain and gzipped), read and converted to exact messages."""

import gzip
import io
import json

import pandas as pd
import pytest

from assets.domain.formats import detect_format, to_example
from assets.raw_records import IngestConfig
from resources.landing import LandingZone
from tests.test_raw_records import rows_of_drop

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
    # A hosted fine-tuning service's preference format (prompt in input.messages, answers as lists).
    "hosted_preference": (
        [
            {
                "input": {"messages": [m(S, "Be brief."), m(U, "Say hi.")], "tools": [], "parallel_tool_calls": True},
                "preferred_output": [m(A, "Hi!")],
                "non_preferred_output": [m(A, "No.")],
            },
            {
                "input": {"messages": [m(U, "2+2?")]},
                "preferred_output": [m(A, "4")],
                "non_preferred_output": [m(A, "5")],
            },
        ],
        [[m(S, "Be brief."), m(U, "Say hi.")], [m(U, "2+2?")]],
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
        flat = [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in records]
        return pd.DataFrame(flat).to_csv(index=False).encode()
    buf = io.BytesIO()
    pd.DataFrame(records).to_parquet(buf, index=False)
    return buf.getvalue()


def ingest(tmp_path, records, suffix, gz, config=None):
    data = encode(records, suffix)
    name = f"data{suffix}" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    rows, _ = rows_of_drop(LandingZone(path=str(tmp_path)), name, config or IngestConfig())
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


# A tool-calling chat as a hosted fine-tuning API takes it: `tools` per row, assistant `tool_calls`
# without content, `tool` replies by `tool_call_id`, and per-turn `weight` on assistant turns.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TICKET = {
    "type": "function",
    "function": {
        "name": "create_ticket",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
    },
}


def call(id_, name, arguments):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


TOOL_CHAT = [
    {
        "messages": [
            m(S, "Be brief."),
            m(U, "Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
            {"role": "assistant", "content": "18C and sunny.", "weight": 1},
        ],
        "tools": [WEATHER],
    },
    {
        "messages": [
            m(U, "Printer broken, and is it raining in Oslo?"),
            {
                "role": "assistant",
                "content": "On it.",
                "weight": 0,
                "tool_calls": [
                    call("a", "create_ticket", '{"title": "Printer"}'),
                    call("b", "get_weather", '{"city": "Oslo"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "T-7"},
            {"role": "tool", "tool_call_id": "b", "content": "rain"},
            {"role": "assistant", "content": "Ticket T-7; yes, rain."},
        ],
        "tools": [WEATHER, TICKET],
    },
]
TOOL_CHAT_MESSAGES = [
    [
        m(S, "Be brief."),
        m(U, "Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')]},
        {"role": "tool", "content": "18C, sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "18C and sunny.", "weight": 1},
    ],
    [
        m(U, "Printer broken, and is it raining in Oslo?"),
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [
                call("a", "create_ticket", '{"title": "Printer"}'),
                call("b", "get_weather", '{"city": "Oslo"}'),
            ],
            "weight": 0,
        },
        {"role": "tool", "content": "T-7", "tool_call_id": "a"},
        {"role": "tool", "content": "rain", "tool_call_id": "b"},
        m(A, "Ticket T-7; yes, rain."),
    ],
]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_tool_calling_chat_keeps_tools_calls_replies_and_weights(suffix, gz, tmp_path):
    rows = ingest(tmp_path, TOOL_CHAT, suffix, gz)
    assert [r["format"] for r in rows] == ["openai_chat"] * 2
    examples = [to_example(r["record"], r["format"]) for r in rows]
    assert [e.messages for e in examples] == TOOL_CHAT_MESSAGES
    assert [e.tools for e in examples] == [[WEATHER], [WEATHER, TICKET]]
    assert all(not e.problems and not e.missing and not e.warnings for e in examples)


def test_tool_calls_are_normalized_to_the_openai_shape():
    record = {"messages": [m(U, "x"), {"role": "assistant", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}]}  # fmt: skip
    (turn,) = to_example(record, "openai_chat").messages[1:]
    assert turn == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}  # fmt: skip


def test_tool_fields_outside_tool_calling_chat_are_ignored_with_a_warning():
    legacy = {"messages": [m(U, "x"), {"role": "assistant", "content": "y", "function_call": {"name": "f"}}]}
    assert to_example(legacy, "openai_chat").warnings == ["function_call ignored (use tool_calls)"]
    completion = {"prompt": "x", "completion": [{"role": "assistant", "content": "y", "tool_calls": []}]}
    assert to_example(completion, "prompt_completion").warnings == ["tool calls ignored"]


def test_detection_prefers_the_most_specific_format():
    assert detect_format({"prompt", "chosen", "rejected"}) == "preference"
    assert detect_format({"input", "preferred_output", "non_preferred_output"}) == "hosted_preference"
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
        ({"messages": [m(U, "q")], "tools": "calc"}, "openai_chat", [], "tools is not a list of functions"),
        (
            {"messages": [m(U, "q")], "tools": [{"type": "function"}]},
            "openai_chat",
            [],
            "tools[1] has no function name",
        ),
        (
            {"messages": [m(U, "q"), {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
            "openai_chat",
            [],
            "messages[2] tool call 1 has no function name",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "tool_calls": [call("c", "f", "{}")]}]},
            "openai_chat",
            [],
            "messages[1] (user) has tool_calls; only assistant turns make calls",
        ),
        (
            {"messages": [m(U, "q"), {"role": "assistant", "content": "a", "weight": 0.5}]},
            "openai_chat",
            [],
            "messages[2] has weight 0.5; a turn's weight is 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "weight": 1}, m(A, "a")]},
            "openai_chat",
            [],
            "messages[1] (user) has a weight; only assistant turns have one",
        ),
        ({"prompt": "p", "chosen": [m(U, "x")], "rejected": "r"}, "preference", [], "chosen does not end with"),
        (
            {"input": {"messages": []}, "preferred_output": [m(A, "a")], "non_preferred_output": [m(A, "b")]},
            "hosted_preference",
            ["input.messages"],
            None,
        ),
        (
            {"input": "hi", "preferred_output": [m(A, "a")], "non_preferred_output": [m(A, "b")]},
            "hosted_preference",
            [],
            "input is not an object with messages",
        ),
        (
            {"input": {"messages": [m(U, "q")]}, "preferred_output": [m(A, "a")], "non_preferred_output": [m(U, "b")]},
            "hosted_preference",
            [],
            "non_preferred_output does not end with an assistant message",
        ),
    ],
)
def test_broken_records_report_what_is_wrong(record, fmt, missing, problem):
    example = to_example(record, fmt)
    assert example.missing == missing
    if problem:
        assert example.problems and example.problems[0].startswith(problem)
    else:
        assert not example.problems
