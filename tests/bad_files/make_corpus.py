"""Writes the bad-file corpus next to this script. The files are committed; rerun only to change them:
.venv/bin/python tests/bad_files/make_corpus.py
"""

import gzip
import json
from pathlib import Path

HERE = Path(__file__).parent
GOOD = {"instruction": "Say hi.", "output": "Hi!"}


def lines(*rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


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
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
