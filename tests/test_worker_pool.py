"""Features computed in worker processes (large drops) are exactly those computed in-process."""

import pytest

from data_checks.record_rules import RuleValues, features_in_worker, rows_with_features, start_feature_worker
from resources.worker_pool import ordered_map


def test_results_come_in_order_and_errors_surface():
    items = [[0] * n for n in (5, 1, 4, 2, 3, 7, 6)]
    assert [(i, r) for i, r in ordered_map(len, items, workers=2)] == [(i, len(i)) for i in items]
    with pytest.raises(TypeError):
        list(ordered_map(len, [[1], 3], workers=2))


def raw_batch(start: int, n: int) -> list[dict]:
    records = []
    for i in range(start, start + n):
        record = {"instruction": f"Ticket {i}: " + "my order is late " * (i % 9), "output": f"answer {i}"}
        if i % 5 == 0:
            record["input"] = "write to jane.doe@example.com or call 415-555-0132"
        if i % 7 == 0:
            record["output"] = ""
        records.append(record)
    return [
        {"row_id": i, "drop": "d", "source_file": "d/t.jsonl", "source_line": i + 1, "format": "alpaca",
         "record": r, "mapping": None}
        for i, r in zip(range(start, start + n), records)
    ]  # fmt: skip


def test_worker_features_equal_in_process_ones(bundled_tokenizer):
    settings = RuleValues(max_tokens=64, truncate_over_long=True, system_prompt="You triage tickets.", pii="redact")
    batches = [raw_batch(s, 40) for s in (0, 40, 80)]
    pooled = list(ordered_map(features_in_worker, batches, 2, start_feature_worker, (bundled_tokenizer, settings)))
    assert [b for b, _ in pooled] == batches
    expected = [rows_with_features(b, bundled_tokenizer, settings) for b in batches]
    assert [rows for _, rows in pooled] == expected
    flat = [r for rows in expected for r in rows]
    assert any(r["pii"] for r in flat) and any(r["truncated"] for r in flat), "the batch exercises redaction and cuts"
