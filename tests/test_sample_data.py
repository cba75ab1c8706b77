import json
from collections import Counter

from assets.raw_records import IngestConfig
from pipelines.sample_data.generate import rendered_files
from pipelines.settings import SAMPLE_LANDING
from resources.landing import LandingZone
from tests.test_raw_records import rows_of_drop


def test_committed_sample_data_is_what_the_generator_writes():
    for path, text in rendered_files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} differs: run make sample-data"


def test_sample_data_has_four_dated_drops_in_two_file_types():
    landing = LandingZone(path=str(SAMPLE_LANDING))
    assert {f.suffix for f in landing.files()} == {".jsonl", ".csv"}
    drops = sorted({f.drop for f in landing.files()})
    assert drops == ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]
    rows = [r for d in drops for r in rows_of_drop(landing, d, IngestConfig())[0]]
    assert len(rows) == 436
    assert Counter(r["format"] for r in rows) == {"alpaca": 400, "preference": 36}
    labels = Counter(r["record"].get("output") for r in rows)
    assert len(labels) > 20, "answers vary"


def test_preference_pairs_prefer_the_right_json_over_one_wrong_field():
    landing = LandingZone(path=str(SAMPLE_LANDING))
    pairs = [r["record"] for r in rows_of_drop(landing, "2026-01-26", IngestConfig())[0]]
    assert len(pairs) == 36
    wrong_fields = Counter()
    for pair in pairs:
        chosen, rejected = json.loads(pair["chosen"]), json.loads(pair["rejected"])
        assert chosen.keys() == rejected.keys() == {"category", "priority", "product"}
        (field,) = [k for k in chosen if chosen[k] != rejected[k]]
        wrong_fields[field] += 1
        assert pair["prompt"].startswith(("Triage", "Read", "Classify"))
    assert set(wrong_fields) == {"category", "priority", "product"}, "each field is the wrong one somewhere"
