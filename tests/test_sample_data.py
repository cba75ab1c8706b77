from collections import Counter

from assets.raw_records import read_file
from pipelines.sample_data.generate import rendered_files
from pipelines.settings import SAMPLE_LANDING
from resources.landing import LandingZone


def test_committed_sample_data_is_what_the_generator_writes():
    for path, text in rendered_files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} differs: run make sample-data"


def test_sample_data_has_three_dated_drops_in_two_formats():
    files = LandingZone(path=str(SAMPLE_LANDING)).files()
    assert len({f.drop for f in files}) == 3
    assert {f.path.suffix for f in files} == {".jsonl", ".csv"}
    rows = [r for f in files for r in read_file(f, f.path.read_text())]
    assert 300 <= len(rows) <= 600
    labels = Counter(r["output"] for r in rows if r.get("output"))
    assert len(labels) > 20, "answers vary"
