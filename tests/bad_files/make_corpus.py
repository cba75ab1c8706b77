"""Writes the bad-file corpus next to this script. The files are committed; rerun only to change them:
.venv/bin/python tests/bad_files/make_corpus.py
"""

import gzip
import json
from pathlib import Path

HERE = Path(__file__).parent
GOOD = {"instruction": "Say hi.", "output": "Hi!"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tool_chat(arguments: str) -> dict:
    """A tool-calling chat row whose one call has `arguments` (JSON text, when well formed)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
            {"role": "assistant", "content": "18C in Paris."},
        ],
        "tools": [WEATHER],
    }


def lines(*rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def preference(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def main() -> None:
    files = {
        "malformed_line.jsonl": lines(GOOD, GOOD) + b'{"instruction": "Say hi.", "output": \n',
        "latin1.jsonl": lines(GOOD) + '{"instruction": "Caf\xe9?", "output": "Oui"}\n'.encode("latin-1"),
        "truncated.jsonl.gz": gzip.compress(lines(*[{**GOOD, "input": f"row {i}"} for i in range(200)]), mtime=0)[:300],
        "empty.jsonl": b"",
        "empty.csv": b"",
        "unknown_columns.jsonl": lines({"question": "Why?", "answer": "Because."}),
        "ragged.csv": b"instruction,input,output\nSay hi.,,Hi!\nSay bye.,Bye!\n",
        "latin1.csv": "instruction,output\nSay hi.,Hi!\nCaf\xe9?,Oui\n".encode("latin-1"),
        "not_an_array.json": json.dumps(GOOD).encode(),
        "broken_array.json": (
            b'[\n  {"instruction": "Say hi.", "output": "Hi!"},\n  {"instruction": "x",\n  "output" "y"}\n]\n'
        ),
        "not_parquet.parquet": b"instruction,output\nSay hi.,Hi!\n",
        "scalar_line.jsonl": lines(GOOD) + b"[1, 2]\n",
        # Readable, so not an ingest error: its second row is rejected (arguments as a Python dict repr).
        "tool_call_bad_arguments.jsonl": lines(tool_chat('{"city": "Paris"}'), tool_chat("{'city': 'Paris'}")),
        # A hosted-format preference file whose second pair offers the same answer twice.
        "preference_same_answers.jsonl": lines(
            preference("2+2?", "4", "5"), preference("Capital of France?", "Paris.", " paris. ")
        ),
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
