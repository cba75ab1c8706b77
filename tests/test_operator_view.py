"""What an operator sees: runs of `make run` belong to the code location (the UI's run list), the
terminal shows stages and not Dagster's debug log, drops stay in sync after a run, each drop keeps its
own check verdicts and quality figures, Data Docs read offline over http, the UI's text is clean,
figures are rounded and small counts are tables, links between the UIs survive a UI moving port."""

import io
import json
import re
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from assets.domain.drops import DROPS
from assets.domain.figures import counts_table, shown, shown_floats, significant, table_counts
from data_checks.record_checks import CHECK_SPECS
from data_checks.record_suite import FEATURE_SQL_COLUMNS, record_suite
from pipelines.docs_server import serve
from pipelines.settings import Settings
from pipelines.ui_links import forward, record_address
from resources.expectations import GreatExpectations
from resources.models import BUNDLED_BASE_MODEL
from tests.conftest import make_settings

DROP_NAMES = ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]


def test_figures_are_rounded_to_four_decimals_and_tiny_ones_to_four_significant_digits():
    assert significant(0.5964912280701754) == 0.5965
    assert significant(0.000123456) == 0.0001235 and significant(0.0) == 0.0
    assert shown(0.007692) == 0.0077 and shown(0.5964912280701754) == 0.5965 and shown(48022.21259827196) == 48022.2126
    assert shown(7.70666566718009e-7) == 7.707e-7 and shown(0.00025) == 0.00025, "below 0.001: 4 significant digits"
    metadata = {"loss": 10.781965891520182, "steps": 3, "name": "x"}
    assert shown_floats(metadata) == {"loss": 10.782, "steps": 3, "name": "x"}


def test_small_counts_are_markdown_tables_read_back_as_counts():
    table = counts_table({"email": 1, "phone": 2}, "kind", "found")
    assert table == "| kind | found |\n|---|---|\n| phone | 2 |\n| email | 1 |"
    assert table_counts(table) == {"phone": 2, "email": 1} and table_counts(counts_table({}, "kind")) == {}
    assert table_counts({"email": 1}) == {"email": 1}, "metadata written as JSON before still reads"


def test_links_lead_to_where_each_ui_runs_when_opened(tmp_path):
    known = {"dagster": "http://127.0.0.1:3001", "mlflow": "http://0.0.0.0:5002"}
    assert forward("/go/dagster/runs/abc", known) == "http://127.0.0.1:3001/runs/abc"
    assert forward("/go/mlflow/models/m/versions/3?workflowType=machine_learning", known, "box") == (
        "http://box:5002/#/models/m/versions/3?workflowType=machine_learning"
    ), "MLflow's pages are routes after '#'; a UI on every interface is reached by the host the link named"
    assert forward("/2026-01-12-records.html", known) is None and forward("/go/other/x", known) is None

    settings = Settings.from_env({"FT_HOME": str(tmp_path), "FT_MLFLOW_UI_URL": "http://127.0.0.1:5000"})
    server = serve(str(tmp_path), "http://127.0.0.1:0", settings)
    hub = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert where(f"{hub}/go/mlflow/experiments/1/runs/r") == "http://127.0.0.1:5000/#/experiments/1/runs/r"
        record_address(tmp_path, "mlflow", "http://127.0.0.1:5002")  # `make mlflow-ui PORT=5002` later on
        assert where(f"{hub}/go/mlflow/experiments/1/runs/r") == "http://127.0.0.1:5002/#/experiments/1/runs/r"
    finally:
        server.shutdown()


def where(url: str) -> str:
    """Where the links server sends `url` (its redirect, not followed)."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        urllib.request.build_opener(Stay).open(url, timeout=5)
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 307
        return redirect.headers["Location"]
    raise AssertionError(f"{url} was not redirected")


def test_every_resource_and_asset_reads_well_in_the_ui(tmp_path):
    from pipelines.definitions import build_definitions

    defs = build_definitions(make_settings(tmp_path, BUNDLED_BASE_MODEL))
    missing = [k for k, r in defs.resources.items() if not (type(r).__doc__ or "").strip()]
    assert not missing, f"resources without a description (class docstring): {missing}"
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        description = graph.get(key).description or ""
        outside_code = re.sub(r"`[^`]*`", "", description)
        assert not re.search(r"<[A-Za-z][^>]*>", outside_code), f"{key}: <...> outside backticks is eaten as HTML"
    assert all(spec.partitions_def == DROPS for spec in CHECK_SPECS), "each drop keeps its own check verdicts"


def test_data_docs_read_offline_and_show_the_gates_verdict(tmp_path):
    gx = GreatExpectations(project_dir=str(tmp_path / "gx"), docs_url="http://127.0.0.1:3030/")
    features = gx.features_file("2026-01-12-abcd", FEATURE_SQL_COLUMNS)
    rows = [{"row_id": i, **{c: None for c, _ in FEATURE_SQL_COLUMNS}, "n_tokens": 10} for i in range(20)]
    rows[3]["missing_fields"] = "output"
    features.store("records", rows)
    report = gx.validate_features(features, "records", record_suite(256), publish=False)
    features.close()
    assert not report.success, "the suite alone fails on one bad row"
    assert report.docs_url == "http://127.0.0.1:3030/2026-01-12-abcd-records.html"
    assert not (gx.docs_dir / "2026-01-12-abcd-records.html").exists(), "left to the caller, who has the verdict"
    gx.publish_verdict(report, "Drop 2026-01-12", True, "passed the quality gate: 1 of 20 rows (5.0%); limit 10.0%")
    page = (gx.docs_dir / "2026-01-12-abcd-records.html").read_text()
    assert "<style>" in page and not re.search(r"(src|href)=['\"]?(https?:)?//", page), "no asset from the internet"
    assert "verdict passed" in page and "passed the quality gate" in page
    index = (gx.docs_dir / "index.html").read_text()
    assert "2026-01-12-abcd-records.html" in index and "passed the quality gate" in index


def test_a_drops_data_docs_pages_are_written_once_the_suites_page_with_the_gates_verdict(
    tmp_path, tiny_model_dir, monkeypatch
):
    import resources.expectations
    from pipelines.definitions import build_definitions

    landing = tmp_path / "landing" / "2026-05-04"
    landing.mkdir(parents=True)
    rows = [{"instruction": f"Question {i}?", "output": "" if i == 0 else f"Answer {i}."} for i in range(20)]
    (landing / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = make_settings(tmp_path / "home", str(tiny_model_dir), landing=landing.parent).prepare()
    defs, instance = build_definitions(settings), dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("prepare_base_model").execute_in_process(instance=instance).success
    instance.add_dynamic_partitions(DROPS.name, ["2026-05-04"])
    written = Counter()
    write_page = resources.expectations.write_page

    def counting(folder, name, *args):
        written[name] += 1
        write_page(folder, name, *args)

    monkeypatch.setattr(resources.expectations, "write_page", counting)
    result = defs.resolve_job_def("ingest_drop").execute_in_process(instance=instance, partition_key="2026-05-04")
    assert result.success and len(written) == 2, "the suite on all rows, then again on the rows that passed"
    assert set(written.values()) == {1}, f"each page written once: {written}"
    (drop_page,) = [p for p in written if p.endswith("-records")]
    page = (settings.home / "gx" / "docs" / f"{drop_page}.html").read_text()
    assert "passed the quality gate: 1 of 20 rows rejected as bad data (5.0%)" in page, "the gate's verdict"
    assert "required field missing or blank" in page, "and the suite's outcomes"


@pytest.mark.integration
def test_drops_stay_in_sync_and_keep_their_own_quality(pipeline):
    """After two whole runs (base model prepared, drops ingested, finetune run): no drop is
    unsynced, each drop has its own check verdicts, and instruction_pairs tabulates every drop."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    from pipelines.definitions import build_definitions

    instance, graph = pipeline["instance"], build_definitions(pipeline["settings"]).resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    for drop in DROP_NAMES:
        status = resolver.get_status(dg.AssetKey("validated_records"), drop)
        assert status == StaleStatus.FRESH, (drop, resolver.get_stale_causes(dg.AssetKey("validated_records"), drop))

    # The personal-data warning: one verdict for what trains (the check list and the latest execution
    # agree), naming the drop whose rows carry contact details; each drop's figures in its metadata.
    key = dg.AssetCheckKey(dg.AssetKey("instruction_pairs"), "personal_data_scan")
    (latest, *_) = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    evaluation = latest.event.dagster_event.event_specific_data
    assert latest.status.value == "FAILED" and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "(drop 2026-01-12: 2 rows, email 1, phone 1): kept" in evaluation.description
    second_drop = dg.AssetRecordsFilter(asset_key=dg.AssetKey("validated_records"), asset_partitions=["2026-01-12"])
    drop = instance.fetch_materializations(second_drop, limit=1).records[0].asset_materialization.metadata
    assert (drop["pii_rows"].value, drop["rows_rejected"].value, drop["rejected_share"].value) == (2, 1, 0.0077)
    assert drop["pii_counts"].value == "| kind | found |\n|---|---|\n| email | 1 |\n| phone | 1 |"

    metadata = instance.get_latest_materialization_event(dg.AssetKey("instruction_pairs")).asset_materialization
    table = metadata.metadata["drop_quality"].value
    assert "| 2026-01-12 | passed: in training | 130 | 1 | 0.8% | required field missing or blank (1) |" in table
    assert "email 1, phone 1" in table
    assert "| 2026-01-19 | passed: in training | 120 | 0 | 0.0% | - | - | 1 (last user turn cut (1)) | 0 |" in table


@pytest.mark.integration
def test_make_run_launches_through_the_code_location(tmp_path, monkeypatch, tiny_model_dir):
    """A run launched the way `make run` launches it: created from the code location in
    workspace.yaml, listed under its job, its stages on the terminal and Dagster's log in the file."""
    from pipelines.code_location import code_location_runs
    from pipelines.run import WORKSPACE_FILE, LaunchedPipeline, Terminal

    for variable in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "FT_LANDING_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FT_HOME", str(tmp_path))
    monkeypatch.setenv("FT_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("FT_PRESET", "smoke")
    from pipelines.settings import Settings

    settings = Settings.from_env().prepare()
    shown = io.StringIO()
    log_path = tmp_path / "make-run.log"
    with dg.DagsterInstance.get() as instance, log_path.open("w") as log:
        with code_location_runs(instance, WORKSPACE_FILE) as runs:
            pipeline = LaunchedPipeline(settings, instance, runs, Terminal(shown, log, log_path))
            run, events = pipeline.run("prepare_base_model", "Base model")
            assert pipeline.value("base_model") == str(
                Path(settings.home) / "artifacts" / "base_model" / run_folder(settings)
            )
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None
        assert run.remote_job_origin.location_name == "pipelines.definitions"
        listed = instance.get_runs(dg.RunsFilter(job_name="prepare_base_model"))
        assert [r.run_id for r in listed] == [run.run_id]
    terminal = shown.getvalue()
    assert "  base_model ...\n    Preparing base model" in terminal and "  base_model done (" in terminal
    assert "DEBUG" not in terminal and "STEP_START" not in terminal
    assert any(e.event_type_value == "STEP_SUCCESS" for e in events)


def run_folder(settings) -> str:
    from assets.base_model import cache_name

    return cache_name(settings.base_model)
