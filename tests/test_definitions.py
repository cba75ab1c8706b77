import dagster as dg

from resources.models import BUNDLED_BASE_MODEL
from tests.conftest import make_settings

ASSET_KEYS = {
    "base_model",
    "raw_records",
    "validated_records",
    "rejected_records",
    "instruction_pairs",
    "training_preview",
    "fine_tuned_model",
    "preference_tuned_model",
    "model_evaluation",
    "registered_model",
    "champion_model",
}


def test_definitions_module_loads_with_the_graph_checks_and_job(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_HOME", str(tmp_path))
    import importlib

    import pipelines.definitions as module

    defs = importlib.reload(module).defs()
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSET_KEYS
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {
        ("instruction_pairs", "personal_data_scan"),
        ("validated_records", "rows_pass_record_suite"),
        ("validated_records", "rejected_share_within_limit"),
        ("instruction_pairs", "train_eval_disjoint"),
        ("registered_model", "promotion_gate"),
    }
    assert {j.name for j in defs.jobs} == {"prepare_base_model", "ingest_drop", "training_data", "finetune"}
    assert {s.name: s.default_status for s in defs.sensors} == {
        "landing_sensor": dg.DefaultSensorStatus.RUNNING,
        "retrain_automation": dg.DefaultSensorStatus.RUNNING,
    }
    (schedule,) = defs.schedules
    assert (schedule.name, schedule.cron_schedule) == ("retrain_schedule", "0 6 * * 1")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_lineage_runs_from_raw_data_to_the_registry(tmp_path):
    from pipelines.definitions import build_definitions

    graph = build_definitions(make_settings(tmp_path, BUNDLED_BASE_MODEL)).resolve_asset_graph()

    def parents(key):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    assert parents("validated_records") == {"raw_records", "base_model"}
    for key in ("raw_records", "validated_records", "rejected_records"):
        assert graph.get(dg.AssetKey(key)).partitions_def.name == "drops"
    assert graph.get(dg.AssetKey("instruction_pairs")).partitions_def is None
    assert parents("instruction_pairs") == {"validated_records"}
    assert parents("fine_tuned_model") == {"base_model", "instruction_pairs"}
    assert parents("training_preview") == {"base_model", "instruction_pairs"}
    assert parents("preference_tuned_model") == {"base_model", "fine_tuned_model", "instruction_pairs"}
    assert parents("model_evaluation") == {"base_model", "preference_tuned_model", "instruction_pairs"}
    assert {"preference_tuned_model", "model_evaluation", "rejected_records"} <= parents("registered_model")
    assert "fine_tuned_model" not in parents("registered_model"), "the candidate is registered, not the SFT stage"
    assert parents("champion_model") == {"registered_model"}
