from collections import Counter

from assets.raw_records import IngestConfig, read_drop
from pipelines.sample_data.generate import rendered_files
from pipelines.settings import SAMPLE_LANDING
from resources.landing import LandingZone


def test_committed_sample_data_is_what_the_generator_writes():
    for path, text in rendered_files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} differs: run make sample-data"


def test_sample_data_has_three_dated_drops_in_two_formats():
    landing = LandingZone(path=str(SAMPLE_LANDING))
    assert {f.suffix for f in landing.files()} == {".jsonl", ".csv"}
    drops = sorted({f.drop for f in landing.files()})
    assert drops == ["2026-01-05", "2026-01-12", "2026-01-19"]
    rows = [r for d in drops for r in read_drop(landing, d, IngestConfig())[0]]
    assert 300 <= len(rows) <= 600
    assert {r["format"] for r in rows} == {"alpaca"}
    labels = Counter(r["record"].get("output") for r in rows)
    assert len(labels) > 20, "answers vary"
