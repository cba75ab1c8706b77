"""Benchmark: raw files -> raw_records -> validated_records -> instruction_pairs, real Dagster assets.

    make bench        (or: .venv/bin/python -m tests.bench.ingest --rows 100000 --frame 100000)

Rows come from ../shared/data/dolly (real records of uneven lengths) when present, else from the
sample-data generator; either way they are made unique by numbering, written as JSONL files in a
temp landing folder (one drop of 4 files), and run through the three stages with the bundled
tokenizer. `--frame` sizes read the same files into one pandas frame instead, for comparison. Each
size runs in its own process so peak memory (max RSS) is its own. Each size prints its figures as
one JSON line, then `rows=N rows_per_second=N`.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOLLY = Path(__file__).resolve().parents[3] / "shared" / "data" / "dolly" / "dolly-1147.jsonl"


def source_records() -> tuple[str, list[dict]]:
    if DOLLY.is_file():
        return "dolly (../shared/data)", [json.loads(line) for line in DOLLY.open()]
    from pipelines.sample_data.generate import ticket

    rng = random.Random(0)
    return "generated tickets (dolly not found)", [ticket(rng) for _ in range(1000)]


def write_landing(root: Path, rows: int, files: int = 4) -> str:
    """One drop (`root/bench/`) of `files` JSONL files holding `rows` unique records in all."""
    name, records = source_records()
    per_file = rows // files
    (root / "bench").mkdir(parents=True)
    for f in range(files):
        with (root / "bench" / f"part-{f}.jsonl").open("w") as out:
            for i in range(per_file):
                r = dict(records[(f * per_file + i) % len(records)])
                r["instruction"] = f"[{f}-{i}] {r['instruction']}"
                out.write(json.dumps(r) + "\n")
    return name


def max_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def one_frame(rows: int) -> dict:
    """For comparison: the same files read into one pandas frame (what holding a landing in
    memory costs before any processing)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        write_landing(Path(tmp), rows)
        started = time.perf_counter()
        frame = pd.concat(
            [pd.read_json(f, lines=True) for f in sorted((Path(tmp) / "bench").iterdir())], ignore_index=True
        )
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in (Path(tmp) / "bench").iterdir())
    return {
        "rows": len(frame),
        "what": "pandas.read_json into one frame",
        "landing_mb": round(size / 2**20),
        "seconds": round(seconds, 1),
        "max_rss_mb": max_rss_mb(),
    }


def run_once(rows: int, home: Path, workers: int = 0) -> dict:
    import dagster as dg

    from pipelines.definitions import build_definitions
    from resources.models import BUNDLED_BASE_MODEL
    from tests.conftest import make_settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_landing(tmp / "landing", rows) if rows else "-"
        if not rows:
            (tmp / "landing").mkdir()
        settings = make_settings(home, BUNDLED_BASE_MODEL, landing=tmp / "landing").prepare()
        defs = build_definitions(settings, {"validation": {"max_rejected_fraction": 1.0, "workers": workers}})
        instance = dg.DagsterInstance.ephemeral()
        # The base model (for its tokenizer) is prepared by an earlier process; here it is reused.
        defs.resolve_job_def("prepare_base_model").execute_in_process(instance=instance)
        if not rows:
            return {}
        instance.add_dynamic_partitions("drops", ["bench"])
        started = time.perf_counter()
        ingest = defs.resolve_job_def("ingest_drop").execute_in_process(instance=instance, partition_key="bench")
        pairs = defs.resolve_job_def("finetune").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("instruction_pairs")]
        )
        seconds = time.perf_counter() - started
        steps = {
            e.step_key: round(e.event_specific_data.duration_ms / 1000, 1)
            for result in (ingest, pairs)
            for e in result.all_events
            if e.is_step_success
        }
        valid = len(ingest.output_for_node("validated_records", "validated_records"))
        landing_mb = round(sum(f.stat().st_size for f in (tmp / "landing" / "bench").iterdir()) / 2**20)
    return {
        "rows": rows,
        "what": "raw_records -> validated_records -> instruction_pairs",
        "source": source,
        "landing_mb": landing_mb,
        "seconds": round(seconds, 1),
        "rows_per_second": round(rows / seconds),
        "steps_seconds": steps,
        "rows_valid": valid,
        "max_rss_mb": max_rss_mb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--frame", type=int, nargs="*", default=[], help="also read these sizes into one pandas frame, for comparison"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="validation.workers (0: auto, worker processes from 50k rows; 1: none)"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-frame", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_once(args.one, args.home, args.workers)))
        return 0
    if args.one_frame is not None:
        print(json.dumps(one_frame(args.one_frame)))
        return 0
    with tempfile.TemporaryDirectory() as home:
        runs = [["--one", "0"]] + [["--one", str(n)] for n in args.rows] + [["--one-frame", str(n)] for n in args.frame]
        for i, run in enumerate(runs):  # the first prepares the base model once, in a process of its own
            out = subprocess.run(
                [sys.executable, "-m", "tests.bench.ingest", *run, "--home", home, "--workers", str(args.workers)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(out.stderr[-3000:])
                return out.returncode
            if i:
                line = out.stdout.strip().splitlines()[-1]
                print(line, flush=True)
                result = json.loads(line)
                if "rows_per_second" in result:  # the headline figure, easy to grep: rows_per_second=N
                    print(f"rows={result['rows']} rows_per_second={result['rows_per_second']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
