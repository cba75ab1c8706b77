"""The retraining loop with three drops arriving one after another: real sensor ticks, automation
evaluations and schedule ticks on a real (ephemeral) Dagster instance, with the requested runs
executed in-process as the daemon would launch them. The tiny model keeps it fast.
"""

import shutil

import dagster as dg
import pytest
from mlflow import MlflowClient

from pipelines.definitions import build_definitions
from pipelines.settings import SAMPLE_LANDING
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

DROPS = ["2026-01-05", "2026-01-12", "2026-01-19"]
TRAINING = [
    "instruction_pairs",
    "fine_tuned_model",
    "preference_tuned_model",
    "model_evaluation",
    "registered_model",
    "champion_model",
]


class Loop:
    """The landing folder, the Definitions and instance, and what the daemon would do with them."""

    def __init__(self, home, landing, tiny_model_dir):
        self.landing = landing
        self.settings = make_settings(home, str(tiny_model_dir), landing=landing).prepare()
        lower_bar = {"min_improvement": -1.0, "min_gain_over_champion": -1.0, "max_forgetting_pct": 1000.0}
        self.defs = build_definitions(self.settings, {"gate": lower_bar})  # tiny model: every version promotes
        self.instance = dg.DagsterInstance.get()  # the sqlite instance under this FT_HOME, as make dev uses
        self.sensor_cursor = None
        self.automation_cursor = None

    def land(self, drop: str) -> None:
        shutil.copytree(SAMPLE_LANDING / drop, self.landing / drop)

    def tick_sensor(self) -> dg.SensorResult:
        sensor = self.defs.resolve_sensor_def("landing_sensor")
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.sensor_cursor, resources={"landing": self.defs.resources["landing"]}
        )
        result = sensor(context)
        self.sensor_cursor = result.cursor or self.sensor_cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)
        return result

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(instance=self.instance, partition_key=request.partition_key)
        assert result.success
        return result

    def automation_requests(self) -> dict[str, int]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.automation_cursor
        )
        self.automation_cursor = result.cursor
        return {
            k: result.get_num_requested(dg.AssetKey(k)) for k in TRAINING if result.get_num_requested(dg.AssetKey(k))
        }

    def retrain(self) -> dg.ExecuteInProcessResult:
        """The run automation requests: instruction_pairs through registered_model."""
        job = self.defs.resolve_job_def("finetune")
        result = job.execute_in_process(instance=self.instance, asset_selection=[dg.AssetKey(k) for k in TRAINING])
        assert result.success
        return result

    def schedule_tick(self):
        schedule = self.defs.resolve_schedule_def("retrain_schedule")
        return schedule(dg.build_schedule_context(instance=self.instance))


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_model_dir):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("ft_loop")
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    landing = tmp_path_factory.mktemp("landing")
    yield Loop(home, landing, tiny_model_dir)
    mp.undo()


@pytest.fixture(scope="module")
def history(loop):
    """Drops 1, 2, 3 arrive in turn; after each, a sensor tick, its runs, then automation."""
    seen = {"ticks": [], "automation": [], "schedule": [], "pairs": [], "versions": []}

    seen["automation_at_start"] = loop.automation_requests()  # the daemon evaluates from the start
    first = loop.tick_sensor()  # no base model yet: it is prepared before any drop is taken
    seen["ticks"].append([(r.job_name, r.partition_key) for r in first.run_requests])
    for request in first.run_requests:
        loop.launch(request)
    seen["automation_after_base_model"] = loop.automation_requests()
    seen["schedule"].append(loop.schedule_tick())

    for drop in DROPS:
        loop.land(drop)
        tick = loop.tick_sensor()
        seen["ticks"].append([(r.job_name, r.partition_key) for r in tick.run_requests])
        for request in tick.run_requests:
            loop.launch(request)
        quiet = loop.tick_sensor()
        seen["ticks"].append([(r.job_name, r.partition_key) for r in quiet.run_requests])
        seen["schedule"].append(loop.schedule_tick())
        seen["automation"].append(loop.automation_requests())
        result = loop.retrain()
        seen["pairs"].append(result.output_for_node("instruction_pairs").frame())
        seen["versions"].append(result.output_for_node("registered_model").version)
        seen["automation"].append(loop.automation_requests())
        seen["schedule"].append(loop.schedule_tick())
    return seen


def test_sensor_requests_exactly_the_new_drop_and_nothing_on_a_quiet_tick(history):
    assert history["ticks"] == [
        [("prepare_base_model", None)],
        [("ingest_drop", "2026-01-05")],
        [],
        [("ingest_drop", "2026-01-12")],
        [],
        [("ingest_drop", "2026-01-19")],
        [],
    ]


def test_automation_retrains_only_when_new_data_was_validated(history):
    every_training_asset_once = dict.fromkeys(TRAINING, 1)
    assert history["automation_at_start"] == {}
    assert history["automation_after_base_model"] == {}, "a new base model alone is no reason to register"
    assert history["automation"] == [every_training_asset_once, {}] * 3


def test_schedule_skips_without_new_data_and_runs_with_it(history):
    kinds = [type(tick).__name__ for tick in history["schedule"]]
    assert kinds == ["SkipReason"] + ["RunRequest", "SkipReason"] * 3
    assert "No drop was validated since the last registered version" in history["schedule"][0].skip_message


def test_version_after_drop_3_names_all_drops_and_its_data(history, loop):
    client = MlflowClient(tracking_uri=loop.settings.mlflow_tracking_uri)
    versions = [client.get_model_version(loop.settings.model_name, v) for v in history["versions"]]
    assert [v.tags["data.drops"] for v in versions] == [
        "2026-01-05",
        "2026-01-05,2026-01-12",
        "2026-01-05,2026-01-12,2026-01-19",
    ]
    last = versions[-1]
    assert len({v.tags["data.train_set_hash"] for v in versions}) == 3
    assert set(last.tags["data.validations"]) and all(d in last.tags["data.validations"] for d in DROPS)
    run = client.get_run(last.run_id)
    assert last.tags["dagster.run_id"] == run.data.tags["dagster.run_id"]
    local = client.download_artifacts(last.run_id, "lineage/examples.parquet")
    import pandas as pd

    examples = pd.read_parquet(local)
    assert sorted(examples["drop"].unique()) == DROPS
    assert {"example_id", "split", "source_file", "source_line"} <= set(examples.columns)


def test_eval_examples_of_drop_1_stay_in_eval_as_drops_arrive(history):
    first, last = history["pairs"][0], history["pairs"][-1]
    source = ["source_file", "source_line"]
    eval_rows = first.loc[first["split"] == "eval", source]
    assert len(eval_rows) > 10
    later = last.merge(eval_rows, on=source)
    assert len(later) == len(eval_rows) and set(later["split"]) == {"eval"}


def test_a_changed_file_is_reported_once_and_not_ingested(history, loop):
    path = loop.landing / "2026-01-05" / "tickets.jsonl"
    path.write_text(path.read_text() + '{"instruction": "late", "input": "", "output": "row"}\n')
    tick = loop.tick_sensor()
    assert tick.run_requests == []
    (observation,) = tick.asset_events
    assert observation.partition == "2026-01-05"
    assert observation.metadata["changed_since_registration"].value == {"changed": ["2026-01-05/tickets.jsonl"]}
    assert loop.tick_sensor().asset_events == [], "reported once per change"
    records = loop.instance.fetch_observations(dg.AssetKey("raw_records"), limit=5).records
    assert [r.partition_key for r in records] == ["2026-01-05"]
