"""Benchmark: raw files -> raw_records -> validated_records -> instruction_pairs, real Dagster assets.

    make bench        (or: .venv/bin/python -m tests.bench.ingest --rows 100000)

Rows come from ../shared/data/dolly (real records of uneven lengths) when present, else from the
sample-data generator; either way they are made unique by numbering, written as JSONL files in a
temp landing folder, and run through the three stages with the bundled tokenizer. Each size runs in
its own process so peak memory (max RSS) is its own.
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
    name, records = source_records()
    per_file = rows // files
    for f in range(files):
        with (root / f"drop-{f}.jsonl").open("w") as out:
            for i in range(per_file):
                r = dict(records[(f * per_file + i) % len(records)])
                r["instruction"] = f"[{f}-{i}] {r['instruction']}"
                out.write(json.dumps(r) + "\n")
    return name


def run_once(rows: int, home: Path) -> dict:
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.settings import BUNDLED_BASE_MODEL
    from tests.conftest import make_settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "landing").mkdir()
        source = write_landing(tmp / "landing", rows) if rows else "-"
        settings = make_settings(home, BUNDLED_BASE_MODEL, landing=tmp / "landing").prepare()
        defs = build_definitions(settings)
        job = defs.resolve_job_def("finetune")
        instance = dg.DagsterInstance.ephemeral()
        config = {"ops": {"validated_records": {"config": {"max_rejected_fraction": 1.0}}}}
        # The base model (for its tokenizer) is prepared by an earlier process; here it is reused.
        job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("base_model")])
        if not rows:
            return {}
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            run_config=config,
            asset_selection=[
                dg.AssetKey(k) for k in ("raw_records", "validated_records", "rejected_records", "instruction_pairs")
            ],
        )
        seconds = time.perf_counter() - started
        steps = {
            e.step_key: round(e.event_specific_data.duration_ms / 1000, 1)
            for e in result.all_events
            if e.is_step_success
        }
        validated = result.output_for_node("validated_records", "validated_records")
    return {
        "rows": rows,
        "source": source,
        "seconds": round(seconds, 1),
        "rows_per_second": round(rows / seconds),
        "steps_seconds": steps,
        "rows_valid": len(validated),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_once(args.one, args.home)))
        return 0
    with tempfile.TemporaryDirectory() as home:
        for rows in [0, *args.rows]:  # 0: prepare the base model once, in a process of its own
            out = subprocess.run(
                [sys.executable, "-m", "tests.bench.ingest", "--one", str(rows), "--home", home],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(out.stderr[-3000:])
                return out.returncode
            if rows:
                print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
