from collections import Counter

from assets.raw_records import IngestConfig, read_drops
from pipelines.sample_data.generate import rendered_files
from pipelines.settings import SAMPLE_LANDING
from resources.landing import LandingZone


def test_committed_sample_data_is_what_the_generator_writes():
    for path, text in rendered_files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} differs: run make sample-data"


def test_sample_data_has_three_dated_drops_in_two_formats():
    landing = LandingZone(path=str(SAMPLE_LANDING))
    assert {f.suffix for f in landing.files()} == {".jsonl", ".csv"}
    rows, failed, _ = read_drops(landing, IngestConfig())
    assert not failed
    assert len({r["drop"] for r in rows}) == 3
    assert 300 <= len(rows) <= 600
    assert {r["format"] for r in rows} == {"alpaca"}
    labels = Counter(r["record"].get("output") for r in rows)
    assert len(labels) > 20, "answers vary"
